import os
import sys

# Tests never reach a model hub: an open_clip pretrained tag must fail at once, not after retries.
os.environ.setdefault('HF_HUB_OFFLINE', '1')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
