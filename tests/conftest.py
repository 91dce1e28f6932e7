import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))
# tiktoken's GPT-2 files from ../shared, so the tests never touch the network
if (SHARED / "tiktoken_cache").is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken_cache"))


def shared_file(*parts):
    """A file from ../shared/data, or skip the test with the reason."""
    path = SHARED.joinpath("data", *parts)
    if not path.exists():
        pytest.skip(f"shared data not found: {path}")
    return path


@pytest.fixture
def tiktoken_vocab():
    """tiktoken's vocab files (GPT-2, cl100k, ...) from ../shared, or skip: tests never download."""
    if not (SHARED / "tiktoken_cache").is_dir():
        pytest.skip("../shared/tiktoken_cache not found (tiktoken's vocab files are needed offline)")


@pytest.fixture
def gpt2(tiktoken_vocab):
    import chat
    return chat.load_tokenizer("gpt2")
