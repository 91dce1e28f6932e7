"""configurator.py: config files and --key=value override the caller's globals, with type checks."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGURATOR = (ROOT / "configurator.py").read_text()
DEFAULTS = dict(batch_size=12, learning_rate=6e-4, compile=False, out_dir="out", wandb_run_name=None)


def configure(monkeypatch, *args):
    """exec configurator.py the way train.py does: in a namespace holding the defaults."""
    monkeypatch.setattr(sys, "argv", ["train.py", *args])
    env = dict(DEFAULTS)
    exec(CONFIGURATOR, env)
    return {k: env[k] for k in DEFAULTS}


def error(monkeypatch, *args):
    with pytest.raises(SystemExit) as e:
        configure(monkeypatch, *args)
    return str(e.value)


def test_file_then_args_override_in_order(monkeypatch, tmp_path):
    cfg = tmp_path / "cfg.py"
    cfg.write_text("import math\nbatch_size = 32\nlearning_rate = batch_size * 1e-5\nout_dir = 'out-x'\n")
    got = configure(monkeypatch, str(cfg), "--batch_size=64", "--out_dir=runs/a b")
    assert got["batch_size"] == 64 and got["out_dir"] == "runs/a b"
    assert got["learning_rate"] == pytest.approx(32e-5)


def test_bare_flag_bools_and_loose_types(monkeypatch):
    got = configure(monkeypatch, "--compile", "--learning_rate=1", "--wandb_run_name=2024")
    assert got["compile"] is True
    assert got["learning_rate"] == 1.0 and isinstance(got["learning_rate"], float)  # int -> float is fine
    assert got["wandb_run_name"] == 2024  # a None default takes anything
    assert configure(monkeypatch, "--compile=True", "--compile=false")["compile"] is False
    assert configure(monkeypatch, "--out_dir=123")["out_dir"] == "123"  # a str setting keeps the text


def test_unknown_key_suggests_the_closest(monkeypatch, tmp_path):
    assert "unknown config key 'lerning_rate' (did you mean 'learning_rate'?)" in \
        error(monkeypatch, "--lerning_rate=3e-4")
    cfg = tmp_path / "cfg.py"
    cfg.write_text("batch_sizes = 8\n")
    assert f"{cfg}: unknown config key 'batch_sizes' (did you mean 'batch_size'?)" in error(monkeypatch, str(cfg))
    assert "did you mean" not in error(monkeypatch, "--zzz")


def test_wrong_type_is_an_error(monkeypatch):
    msg = error(monkeypatch, "--batch_size=1.5")
    assert "batch_size must be int" in msg and "1.5" in msg
    assert "compile must be bool" in error(monkeypatch, "--compile=1")
    assert "learning_rate must be float" in error(monkeypatch, "--learning_rate=fast")


def test_missing_or_broken_config_file(monkeypatch, tmp_path):
    assert "cannot read config file nope.py" in error(monkeypatch, "nope.py")
    cfg = tmp_path / "cfg.py"
    cfg.write_text("batch_size = 8\nlearning_rate = = 1\n")
    assert error(monkeypatch, str(cfg)).startswith(f"{cfg}:2: ")  # the file and line, not <string>
    cfg.write_text("batch_size = 8\n\ndef f():\n    return 1 / 0\n\nlearning_rate = f()\n")
    assert error(monkeypatch, str(cfg)) == f"{cfg}:4: ZeroDivisionError: division by zero"  # where it raised


@pytest.mark.parametrize("path", sorted(str(p) for p in (ROOT / "config").glob("*.py")))
def test_config_files_set_only_train_settings(monkeypatch, path):
    """Every config/*.py goes through the configurator against train.py's real defaults."""
    train_src = (ROOT / "train.py").read_text()
    defaults = train_src[:train_src.index("exec(open(")]  # train.py down to where it runs the configurator
    env = {"__file__": str(ROOT / "train.py")}
    exec(defaults, env)
    monkeypatch.setattr(sys, "argv", ["train.py", path])
    exec(CONFIGURATOR, env)
    assert env["out_dir"] != "out"  # each config writes to its own folder


SCRIPTS = ["train.py", "sample.py", "eval.py", "export.py", "merge.py", "plot.py",
           *sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("data/*/prepare.py"))]


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_answers_help(script):
    """--help: the script's usage and settings, exit 0 (never "unknown config key 'help'")."""
    import subprocess
    out = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip(), out.stderr
    if script in ("train.py", "sample.py", "eval.py", "export.py"):  # the configurator's: every setting, with its default
        assert "  out_dir = " in out.stdout and "settings" in out.stdout
