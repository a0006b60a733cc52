"""Browser viewer of predictions, errors and open-vocabulary queries: ``python -m viewer <folder>`` (README)."""
