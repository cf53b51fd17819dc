"""Launch settings of a multi-process run: flags, JAX's environment variables, and what is missing."""

from __future__ import annotations

import pytest

from jaxpoison.cli import main
from jaxpoison.distributed import barrier, initialize, is_writer, settings_from
from jaxpoison.errors import InputError

ENV = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}


def test_settings_come_from_the_arguments_first_then_the_environment():
    assert settings_from(environ={}) == (None, None, None)
    assert settings_from(environ=ENV) == ("10.0.0.1:1234", 4, 3)
    assert settings_from("h:1", 2, 0, environ=ENV) == ("h:1", 2, 0)
    assert settings_from(process_id=1, environ=ENV) == ("10.0.0.1:1234", 4, 1)  # one flag overrides its variable


@pytest.mark.parametrize(("given", "message"), [
    ({"JAX_COORDINATOR_ADDRESS": "h:1"}, "missing: number of processes, process id"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"}, r"in 0\.\.1; got 2"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"}, "must be an integer"),
    ({"JAX_COORDINATOR_ADDRESS": "h", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "HOST:PORT"),
])  # fmt: skip
def test_incomplete_or_inconsistent_settings_say_what_to_change(given, message):
    with pytest.raises(InputError, match=message):
        settings_from(environ=given)


def test_a_single_process_needs_no_coordinator_and_is_the_writer():
    assert initialize() == (0, 1)
    assert is_writer()
    barrier("free with one process")


def test_the_cli_refuses_half_given_launch_flags_before_running(tmp_path, capsys):
    assert main(["--num-processes", "2", "run", "digits-badnet-tiny", "--out", str(tmp_path / "x")]) == 2
    assert "missing: coordinator, process id" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
