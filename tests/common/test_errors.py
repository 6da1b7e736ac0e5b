"""run_command: an InputError, or a class the command names in `known`, is one line and exit 2; anything else
keeps its traceback. A bad config (configs.ConfigError, not an InputError) is one line where a CLI names it."""
import pytest

from common.errors import EXIT_ERROR, InputError, run_command
from configs import ConfigError


def _raise(error):
    def main():
        raise error
    return main


def test_an_input_error_is_one_line_and_exit_2(capsys):
    assert run_command("prog", _raise(InputError("data.bin: byte 3: truncated"))) == EXIT_ERROR == 2
    assert capsys.readouterr().err == "prog: error: data.bin: byte 3: truncated\n"


def test_a_config_error_is_reported_only_where_the_command_names_it(capsys):
    assert not issubclass(ConfigError, InputError) and issubclass(ConfigError, ValueError)
    error = ConfigError("run.yaml: unknown key 'foo'")
    assert run_command("prog", _raise(error), known=(ConfigError,)) == 2
    assert capsys.readouterr().err == "prog: error: run.yaml: unknown key 'foo'\n"
    with pytest.raises(ConfigError):  # a command that loads no config: a ConfigError there is a bug
        run_command("prog", _raise(error))


def test_a_main_returning_a_status_keeps_it():
    assert run_command("prog", lambda: 1) == 1 and run_command("prog", lambda: None) == 0
