"""An unreachable Hub fails fast; a slow one keeps its deadlines; a late push is never "failed".

Issue 22 item 3 and issue 17 item 8, against the local Hub (``tests/hub_server.py``).
"""

import errno
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from huggingface_hub import constants

import vqzoo
from vqzoo.cli import main as cli_main
from vqzoo.pretrained import WEIGHTS_NAME, PretrainedVQVAE
from vqzoo.pretrained.hub import HubError, HubOutcomeUnknown, unreachable

import hub_server
from hub_server import hub  # noqa: F401  (the fixture)


@pytest.fixture(scope="module")
def model():
  return PretrainedVQVAE(vqzoo.ModelConfig())


def wait_for_hub_threads(timeout_s: float = 30.0) -> None:
  end = time.monotonic() + timeout_s
  for thread in threading.enumerate():
    if thread.name.startswith("vqzoo-hub:"):
      thread.join(max(0.0, end - time.monotonic()))


def assert_fast_one_line_with_hint(error: BaseException, seconds: float, reason: str) -> None:
  message = str(error)
  assert seconds < 5, f"took {seconds:.1f} s"
  assert "\n" not in message and reason in message, message
  assert "HF_HUB_OFFLINE=1" in message, message


# ---------------------------------------------------------------------- no network at all


def test_refused_connection_fails_at_once_without_retries(hub, tmp_path, caplog):
  hub.stop()  # nothing listens on the port: every connection is refused
  t0 = time.monotonic()
  with caplog.at_level(logging.WARNING), pytest.raises(HubError) as e:
    vqzoo.load("hf-hub:someone/never-pulled", cache_dir=str(tmp_path / "c"))
  assert_fast_one_line_with_hint(e.value, time.monotonic() - t0, "refused")
  assert "not in the local cache" in str(e.value)
  assert not [r for r in caplog.records if "Retrying" in r.getMessage()]


def test_dns_failure_fails_at_once_in_the_cli(hub, monkeypatch, capsys):
  url = "http://hub.vqzoo-test.invalid"
  monkeypatch.setattr(constants, "ENDPOINT", url)
  monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                      url + "/{repo_id}/resolve/{revision}/{filename}")
  real = socket.getaddrinfo

  def getaddrinfo(host, *args, **kwargs):
    if host == "hub.vqzoo-test.invalid":
      raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return real(host, *args, **kwargs)

  monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
  assert unreachable() == "cannot resolve hub.vqzoo-test.invalid (Name or service not known)"
  t0 = time.monotonic()
  assert cli_main(["pull", "someone/never-pulled"]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("vqzoo pull: error:") and len(err.splitlines()) == 1, err
  assert_fast_one_line_with_hint(err, time.monotonic() - t0, "cannot resolve")
  assert not hub.requests


def test_no_route_fails_at_once(hub, monkeypatch, tmp_path, model):
  model.push_to_hub("someone/tiny")
  n = len(hub.requests)

  def create_connection(address, *args, **kwargs):
    raise OSError(errno.ENETUNREACH, "Network is unreachable")

  monkeypatch.setattr(socket, "create_connection", create_connection)
  t0 = time.monotonic()
  with pytest.raises(HubError) as e:
    vqzoo.load("hf-hub:someone/tiny", cache_dir=str(tmp_path / "c"))
  assert_fast_one_line_with_hint(e.value, time.monotonic() - t0, "no route")
  with pytest.raises(HubError, match="no route.*nothing was sent"):
    model.push_to_hub("someone/tiny")
  assert len(hub.requests) == n  # neither asked the Hub anything


def test_a_hanging_hub_is_reachable_so_it_keeps_its_deadline(hub, tmp_path, monkeypatch, model):
  model.push_to_hub("someone/tiny")
  hub.set_failure("hang")
  monkeypatch.setenv("VQZOO_HUB_DEADLINE", "2")
  assert unreachable() is None  # it accepts connections
  t0 = time.monotonic()
  with pytest.raises(HubError, match="no answer from the Hub within 2 s"):
    vqzoo.load("hf-hub:someone/tiny", cache_dir=str(tmp_path / "c"))
  assert 2 <= time.monotonic() - t0 < 10


# ---------------------------------------------------------------------- a push past its deadline


def test_a_push_past_its_deadline_is_outcome_unknown_and_the_named_command_tells(
    hub, monkeypatch, model, caplog):
  first = model.push_to_hub("someone/slow").oid
  original = hub_server._Handler._commit

  def slow_commit(self, *args):
    time.sleep(6)  # the Hub takes the commit, but only after the client stopped waiting
    return original(self, *args)

  monkeypatch.setattr(hub_server._Handler, "_commit", slow_commit)
  monkeypatch.setenv("VQZOO_HUB_DEADLINE", "3")
  other = vqzoo.create_model("mnist-mlp", seed=5)
  with caplog.at_level(logging.WARNING, logger="vqzoo"), \
      pytest.raises(HubOutcomeUnknown) as e:
    other.push_to_hub("someone/slow", commit_message="second")
  message = str(e.value)
  assert "outcome is unknown" in message and "may still land" in message
  assert "VQZOO_HUB_DEADLINE" in message
  assert "failed" not in message and "\n" not in message
  assert e.value.head_before == first and f"it was {first} before this push" in message
  assert f"`{e.value.check_command}`" in message
  assert hub.head("someone/slow") == first  # not yet ...

  wait_for_hub_threads()
  head = hub.head("someone/slow")
  assert head != first and WEIGHTS_NAME in hub.files("someone/slow")  # ... but it landed
  assert any("landed after all" in r.getMessage() for r in caplog.records)
  # The command the message names shows the new head.
  env = dict(os.environ, HF_ENDPOINT=hub.url)
  command = e.value.check_command.split()
  assert command[0] == "hf"
  command[0] = str(Path(sys.executable).parent / "hf")  # the environment's, activated or not
  out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
  assert out.returncode == 0 and head in out.stdout, out.stdout + out.stderr


def test_a_push_whose_connection_drops_while_committing_is_outcome_unknown(hub, monkeypatch, model):
  """The Hub makes the commit but the answer is cut off: the client retries (each lands)."""
  from huggingface_hub.utils import _http
  monkeypatch.setattr(_http, "time", type("NoWait", (), {"sleep": staticmethod(lambda s: None)}))
  hub.set_failure("drop", lambda method, path: method == "POST" and "/commit/" in path)
  with pytest.raises(HubOutcomeUnknown) as e:
    model.push_to_hub("someone/dropped")
  message = str(e.value)
  assert "connection failed" in message and "may have landed" in message, message
  assert "the branch main did not exist before this push" in message
  assert e.value.head_before is None
  assert WEIGHTS_NAME in hub.files("someone/dropped")  # it did land


def test_a_push_the_hub_refuses_is_a_failure_not_unknown(hub, monkeypatch, model):
  from huggingface_hub.utils import _http
  monkeypatch.setattr(_http, "time", type("NoWait", (), {"sleep": staticmethod(lambda s: None)}))
  hub.set_failure("500", lambda method, path: method == "POST" and "/commit/" in path)
  with pytest.raises(HubError, match="the Hub failed.*500") as e:
    model.push_to_hub("someone/refused")
  assert not isinstance(e.value, HubOutcomeUnknown)
  assert WEIGHTS_NAME not in hub.files("someone/refused")


def test_a_push_whose_deadline_passes_before_sending_is_cancelled(hub, monkeypatch, model):
  hub.set_failure("hang", lambda method, path: method == "GET" and path.startswith("/api/models/"))
  monkeypatch.setenv("VQZOO_HUB_DEADLINE", "2")
  with pytest.raises(HubError) as e:
    model.push_to_hub("someone/cancelled")
  assert not isinstance(e.value, HubOutcomeUnknown)
  assert "cancelled before anything was sent" in str(e.value)
  hub.set_failure(None)  # the Hub answers now; the cancelled push must not go on
  wait_for_hub_threads()
  time.sleep(0.5)
  assert ("model", "someone/cancelled") not in hub.repos
  assert not [r for r in hub.requests if r[0] == "POST"]


def test_a_push_to_a_stopped_hub_fails_at_once_saying_nothing_was_sent(hub, model):
  hub.stop()
  t0 = time.monotonic()
  with pytest.raises(HubError, match="refused.*nothing was sent"):
    model.push_to_hub("someone/gone")
  assert time.monotonic() - t0 < 5
