"""
Poor man's configurator, exec'd by train.py and sample.py right after their defaults:

    exec(open(os.path.join(os.path.dirname(__file__), 'configurator.py')).read())

Overrides the caller's globals, left to right, from config files and --key=value arguments:
    $ python train.py config/train_chat_demo.py --batch_size=32 --compile
A config file is plain Python that assigns some of the settings. --key=value is read as a Python
literal when it parses as one (--lr=3e-4, --bias=False), else as a string; a bare --flag is True.
Settings are the globals of type int, float, bool, str or None; they keep their type (an int may
go where a float is expected; a None default takes anything). Leaves `config_keys`, the setting
names, so the caller can record the configuration. Mistakes exit with one line, not a traceback.
--help (or -h) prints the caller's docstring and its settings as its source sets them, and exits 0.
"""
import ast as _ast
import builtins as _builtins
import difflib as _difflib
import re as _re
import sys as _sys
import traceback as _traceback

config_keys = [k for k, v in globals().items()
               if not k.startswith('_') and isinstance(v, (int, float, bool, str, type(None)))]


def _set(key, value, source):
    if key not in config_keys:
        close = _difflib.get_close_matches(key, config_keys, n=1)
        _sys.exit(f"{source}: unknown config key '{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    default = globals()[key]
    if isinstance(default, float) and type(value) is int:
        value = float(value)
    if default is not None and type(value) is not type(default):
        _sys.exit(f"{source}: {key} must be {type(default).__name__} like its default {default!r}, "
                  f"got {type(value).__name__} {value!r}")
    globals()[key] = value


def _help():
    """The script's docstring, then each setting's line from its source (default and comment)."""
    try:
        _source = open(__file__, encoding='utf-8').read().splitlines()
    except (NameError, OSError):
        _source = []
    _lines = {}
    for _line in _source:
        _match = _re.match(r'(\w+)\s*=', _line)
        if _match and _match.group(1) in config_keys:
            _lines.setdefault(_match.group(1), _line)
    print((globals().get('__doc__') or '').strip())
    print("\nsettings (config/*.py files and --key=value override them, left to right; a bare --flag is True):")
    for _key in config_keys:
        print('  ' + _lines.get(_key, f"{_key} = {globals()[_key]!r}"))
    _sys.exit(0)


def _parse(key, text):
    if isinstance(globals().get(key), str):
        return text  # a str setting takes the text as it is (--wandb_run_name=2024 stays a string)
    if text.lower() in ('true', 'false'):
        return text.lower() == 'true'
    try:
        return _ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


if {'-h', '--help'} & set(_sys.argv[1:]):
    _help()
for _arg in _sys.argv[1:]:
    if not _arg.startswith('--'):  # a config file
        try:
            _code = open(_arg).read()
        except OSError as _e:
            _sys.exit(f"cannot read config file {_arg}: {_e.strerror}")
        _file_globals = {k: globals()[k] for k in config_keys}  # so a file can use the defaults
        try:
            _code = _builtins.compile(_code, _arg, 'exec')  # errors then name the file (compile is a setting)
        except SyntaxError as _e:
            _sys.exit(f"{_arg}:{_e.lineno}: {_e.msg}")
        try:
            exec(_code, _file_globals)
        except Exception as _e:  # the file's own line that raised, not the traceback into it
            _line = [_f.lineno for _f in _traceback.extract_tb(_e.__traceback__) if _f.filename == _arg][-1]
            _sys.exit(f"{_arg}:{_line}: {type(_e).__name__}: {_e}")
        for _key, _value in _file_globals.items():
            if not _key.startswith('_') and not isinstance(_value, type(_sys)):  # skip imports
                _set(_key, _value, _arg)
    elif '=' in _arg:
        _key, _text = _arg[2:].split('=', 1)
        _set(_key, _parse(_key, _text), _arg)
    else:  # a bare --flag
        _set(_arg[2:], True, _arg)
