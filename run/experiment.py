"""One experiment, every stage: PLG -> ESS training -> ESS inference -> ESG training -> evaluation, into one folder.

    sh run/pipeline.sh <dataset> <experiment> [key value | stage:key value ...]
    sh run/pipeline.sh demo first_try esg:epochs 4 device cpu

``<dataset>`` names the configs (``config/<dataset>/`` and ``vlm_ps_generation/config/<dataset>.yaml``); every
stage runs with ``exp_root exp/<dataset>/<experiment>``, so its inputs and outputs are that experiment's:
``plg/``, ``ess/``, ``ess_embeddings/``, ``esg/`` and ``esg/result_eval/``. A rerun continues where the last
one stopped: PLG and ESS inference skip the scenes whose outputs are current (their manifests), both trainings
resume from their newest checkpoint (``resume auto``), and the evaluation is redone. It ends with the
evaluation, so ``python -m viewer exp/<dataset>/<experiment>/esg`` opens the result at once.

Overrides: ``key value`` goes to every stage that has the key (``device``, ``threads``, the data paths of
``dataset.yaml``, ``arch_3d`` to ESG and evaluation); ``plg:key``, ``ess:key``, ``ess_eval:key``, ``esg:key``,
``eval:key`` go to one stage (``esg:epochs 4``, where ``epochs`` alone would also set
ESS's). ``--from <stage>`` starts at a later stage; ``--dry-run`` prints the commands.
"""
import argparse
import os
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (name, driver, its folder under the experiment, config path under ROOT with {d} the dataset, resumable, schema)
STAGES = (
    ('plg', 'vlm_ps_generation/generation_vlm.sh', 'plg', 'vlm_ps_generation/config/{d}.yaml', False, 'PLG'),
    ('ess', 'run/ess_train.sh', 'ess', 'config/{d}/openseg_pre_train.yaml', True, 'ESS_TRAINING'),
    ('ess_eval', 'run/ess_eval.sh', 'ess', 'config/{d}/openseg_pre_eval.yaml', False, 'ESS_INFERENCE'),
    ('esg', 'run/esg.sh', 'esg', 'config/{d}/openseg_train.yaml', True, 'ESG_TRAINING'),
    ('eval', 'run/eval.sh', 'esg', 'config/{d}/openseg_eval.yaml', False, 'EVALUATION'),
)
NAMES = [s[0] for s in STAGES]


def stage_keys():
    """{stage: the names of its config keys} (read from the stages' schemas, pipeline/schemas.py)."""
    from pipeline import schemas
    return {name: set(getattr(schemas, schema).by_name) for name, *_, schema in STAGES}


def split_overrides(pairs, keys):
    """{stage: [key, value, ...]}: ``key value`` goes to every stage that has the key, ``stage:key value`` to one
    stage; a key that no stage (or not the named one) has is an error before anything runs."""
    if len(pairs) % 2:
        raise SystemExit(f'error: overrides come in pairs (key value); the last one, {pairs[-1]!r}, has no value')
    routed = {name: [] for name in NAMES}
    for key, value in zip(pairs[0::2], pairs[1::2]):
        stage, _, name = key.rpartition(':')
        if stage and stage not in routed:
            raise SystemExit(f"error: override '{key}': unknown stage '{stage}'; the stages are {', '.join(NAMES)}")
        targets = [stage] if stage else [s for s in NAMES if name in keys[s]]
        if not targets or name not in keys[targets[0]]:
            where = f'stage {stage}' if stage else 'any stage'
            raise SystemExit(f"error: override '{key}': '{name}' is not a config key of {where} (python <script> "
                             f"--help lists a stage's keys)")
        for target in targets:
            routed[target] += [name, value]
    return routed


def commands(dataset, experiment, overrides, start='plg'):
    exp = os.path.join('exp', dataset, experiment)
    out = []
    for name, driver, folder, config, resumable, _ in STAGES[NAMES.index(start):]:
        config_path = os.path.join(ROOT, config.format(d=dataset))
        if not os.path.isfile(config_path):
            raise SystemExit(f"error: dataset '{dataset}' has no config '{config_path}' (stage {name}); the datasets "
                             f"are the folders of config/ that have one file per stage, e.g. scannet, s3dis, demo")
        extra = ['exp_root', exp] + (['resume', 'auto'] if resumable else []) + overrides[name]
        out.append((name, ['sh', os.path.join(ROOT, driver), os.path.join(exp, folder), config_path, *extra]))
    return exp, out


def main(argv=None):
    p = argparse.ArgumentParser(prog='sh run/pipeline.sh', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('dataset', help='scannet, s3dis, demo, or a config folder of your own')
    p.add_argument('experiment', help='the experiment name: everything goes to exp/<dataset>/<experiment>')
    p.add_argument('overrides', nargs=argparse.REMAINDER, help='key value | stage:key value ...')
    p.add_argument('--from', dest='start', default='plg', choices=NAMES, help='the first stage to run')
    p.add_argument('--dry-run', action='store_true', help='print the commands, run nothing')
    argv = list(sys.argv[1:] if argv is None else argv)
    options = []  # the options may stand anywhere, also among the overrides
    for flag in ('--dry-run', '--from'):
        while flag in argv:
            i = argv.index(flag)
            width = 2 if flag == '--from' else 1
            options += argv[i:i + width]
            del argv[i:i + width]
    args = p.parse_args(options + argv)
    if '/' in args.experiment or args.experiment in ('', '.', '..'):
        raise SystemExit(f"error: the experiment is a name, not a path (found {args.experiment!r}); it goes to "
                         f"exp/{args.dataset}/<name>")
    exp, steps = commands(args.dataset, args.experiment, split_overrides(args.overrides, stage_keys()), args.start)
    print(f'experiment {exp}: ' + ' -> '.join(name for name, _ in steps), flush=True)
    for i, (name, command) in enumerate(steps, 1):
        print(f'=== [{i}/{len(steps)}] {name}: {shlex.join(command)}', flush=True)
        if args.dry_run:
            continue
        start = time.time()
        code = subprocess.call(command)
        if code:
            later = [n for n, _ in steps[i:]]
            print(f'error: stage {name} failed (exit status {code}); nothing after it ran ({", ".join(later) or "-"}). '
                  f'Fix what it said and run the same command again: finished work is kept', file=sys.stderr)
            return code
        print(f'=== {name} done in {time.time() - start:.0f} s', flush=True)
    if not args.dry_run:
        print(f'done: the evaluation is in {os.path.join(exp, "esg", "result_eval")}; look at it with\n'
              f'  python -m viewer {os.path.join(exp, "esg")}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
