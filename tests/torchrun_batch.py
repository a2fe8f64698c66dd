"""One torchrun launch for the commands of several multi-process tests.

Every ``torchrun`` rank pays ~5 s of CPU importing torch and timm before its command starts,
and the launcher ~2.5 s more: that, not the tiny commands, was most of each multi-process
test's time. :func:`torchrun_batch` therefore starts ``torchrun --nproc-per-node=2`` once per
test process on a small driver (:data:`DRIVER`) whose ranks run the commands of all the
tests one after another, each through ``nctune.cli.main`` as ``python -m nctune`` runs it:
its own process group (gloo on CPU, set up and torn down by the command itself), its own
working folder, its own stdout and stderr per rank (so a test can also see that rank 1
printed nothing). The tests then read a finished :class:`Job`; the launch happens once per
test process whichever of them asks first (with xdist: once in each worker that needs it).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Each job: {"name", "argv", "env"}; the ranks run them in order, each in folder ``name``,
# with stdout/stderr at ``name.RANK.out|err`` and at ``name.RANK.code`` beside the exit code and
# the time the rank ended the job.
# With COUNT in a job's env, each rank appends the shard:key of every WebDataset sample it
# reads to ``$COUNT.RANK`` (the "each sample read once" check).
DRIVER = """
import json, os, sys, time
from nctune.data.sources import webdataset as w
read = w._ShardImages.__getitem__
def counted(self, i):
    if "COUNT" in os.environ:
        with open(f"{os.environ['COUNT']}.{os.environ.get('RANK', '0')}", "a") as f:
            f.write(f"{self.shards[self.shard[int(i)]]}:{self.key[int(i)]}\\n")
    return read(self, i)
w._ShardImages.__getitem__ = counted
from nctune.cli import main
root, rank = os.getcwd(), os.environ["RANK"]
# Each job gets its own store (MASTER_PORT in its env, served by rank 0), not the launcher's:
# a second process group on one store can read the first one's stale addresses and hang.
os.environ.pop("TORCHELASTIC_USE_AGENT_STORE", None)
for job in json.loads(open(sys.argv[1]).read()):
    name = job["name"]
    os.makedirs(os.path.join(root, name), exist_ok=True)
    os.chdir(os.path.join(root, name))
    os.environ.update(job["env"])
    sys.stdout.flush(); sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    out = open(f"{root}/{name}.{rank}.out", "w")
    err = open(f"{root}/{name}.{rank}.err", "w")
    os.dup2(out.fileno(), 1); os.dup2(err.fileno(), 2)
    try:
        main(job["argv"])
    except SystemExit as end:
        code = 0 if end.code is None else end.code if isinstance(end.code, int) else 1
    except BaseException:  # the next jobs still run; the test shows this traceback
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush(); sys.stderr.flush()
        os.dup2(saved[0], 1); os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        out.close(); err.close()
    for var in job["env"]:
        del os.environ[var]
    with open(f"{root}/{name}.{rank}.code", "w") as f:
        f.write(f"{code} {time.time()}")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    """This environment without a launcher's variables, nctune importable, one thread."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **extra)
    return env


@dataclass(frozen=True)
class Job:
    """One command's result on the 2 ranks: ``folder`` is its working folder, ``ended`` the
    time (``time.time()``) each rank finished it."""

    folder: Path
    codes: list[int]
    stdout: list[str]
    stderr: list[str]
    ended: list[float]

    def ok(self) -> None:
        assert self.codes == [0, 0], (self.codes, self.stderr)


_done: dict[str, object] = {}

#: Marks every test that reads :func:`shared`: with ``--dist loadgroup`` (pyproject's
#: addopts) xdist sends them all to one worker, so the suite launches torchrun once, not once
#: in each worker that happens to draw one of them (~25 s of CPU each time).
ONE_LAUNCH = pytest.mark.xdist_group("torchrun_batch")

# ------------------------------------------------------------------ the tests' commands
# A ViT has no BatchNorm: with the same global batches, 2 processes must then match one
# process up to float32 summation order (BatchNorm would normalise per process).
VENDORED = [
    "backbone.pretrained=false",
    "data.subset=vendored",
    "data.image_size=32",
    "device=cpu",
    "train.profile_after=false",
]
ANALYZE = [
    *VENDORED,
    "backbone.name=timm:test_resnet",
    "data.samples_per_class=8",
    "data.batch_size=16",
    "analysis.max_samples=69",  # odd: the two shards differ in size
]
FINETUNE = [
    *VENDORED,
    "backbone.name=timm:test_vit",
    "strategy.name=scl",
    "data.samples_per_class=9",
    "data.val_fraction=0.2",
    "data.max_test_samples=30",
    "data.batch_size=16",  # the global batch: one process and two train on the same batches
    "train.epochs=2",
    "train.lr=0.01",
]
#: test_training_kit: the sampler, class weights and accumulation under DDP.
KIT = [
    *FINETUNE,
    "data.balanced_sampler=true",
    "train.class_weights=auto",
    "train.accumulate_steps=2",
]
#: test_distributed's sweep: two blocks × two modes dealt to the ranks.
SWEEP = [*ANALYZE, "train.epochs=1", "data.max_test_samples=20"]
SWEEP_GRID = ["--blocks", "layer3.0,layer4.0", "--modes", "layer,scl"]


#: test_distributed's failing analyze: rank 1's shard holds the corrupt image
#: (:func:`png_folder_with_a_corrupt_file`); run last, after the jobs that must succeed.
PNGS = [
    "backbone.name=timm:test_resnet",
    "backbone.pretrained=false",
    "data.source=imagefolder",
    "data.image_size=32",
    "data.batch_size=4",
    "data.val_fraction=0",
    "device=cpu",
]


def png_folder_with_a_corrupt_file(root: Path) -> tuple[Path, str]:
    """Two classes of PNGs and one corrupt file at an odd position of the training order."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, cls in enumerate(("ant", "bee")):
        (root / cls).mkdir(parents=True)
        for i in range(5):
            pixels = np.clip(40 + 60 * k + rng.normal(0, 30, (32, 32, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / cls / f"{i}.png")
    (root / "ant" / "3.png").write_bytes(b"\x89PNG not really an image" * 20)
    return root, "3.png"


def sets(*pairs: str) -> list[str]:
    return [arg for p in pairs for arg in ("--set", p)]


def webdataset_sets(data: Path) -> list[str]:
    """test_webdataset's analyze over 36 images in shards of 7 (written by :func:`shared`)."""
    from tests.data.sources.test_webdataset import TINY

    sets_ = [*TINY, "data.source=webdataset", f"data.path={data / 'wds'}"]
    return [*sets_, "data.val_fraction=0", "data.batch_size=16"]


def shared(tmp_path_factory) -> dict[str, Job]:
    """The jobs of every multi-process test, run once in this process (see the module doc)."""
    if "jobs" not in _done:
        from tests.data.sources.formats import image_folder, shards

        root = tmp_path_factory.mktemp("torchrun")
        data = root / "data"
        shards(image_folder(data / "images"), data / "wds", shard_size=7)
        pngs, _ = png_folder_with_a_corrupt_file(data / "pngs")
        jobs = [
            ("analyze", ["analyze", *sets(*ANALYZE), "--out", "two", "--json"], {}),
            ("finetune", ["finetune", *sets(*FINETUNE), "--out", "run"], {}),
            ("sweep", ["sweep", *sets(*SWEEP), *SWEEP_GRID, "--out", "two", "--json"], {}),
            ("kit", ["finetune", *sets(*KIT), "--out", "two"], {}),
            (
                "webdataset",
                ["analyze", *sets(*webdataset_sets(data)), "--out", "out2", "--json"],
                {"COUNT": str(root / "reads")},
            ),
            # -q: no progress lines (rank 0 logs its finished pass off a terminal)
            ("error", ["analyze", *sets(*PNGS, f"data.path={pngs}"), "--out", "out", "-q"], {}),
        ]
        _done["jobs"] = run_batch(root / "runs", [dict(name=n, argv=a, env=e) for n, a, e in jobs])
        _done["root"] = root
    return _done["jobs"]  # type: ignore[return-value]


def shared_root() -> Path:
    """The folder of :func:`shared` (after it ran): ``data/`` (the images, shards and PNGs it
    wrote), ``runs/`` (the jobs) and ``reads.RANK`` (the WebDataset samples each read)."""
    return _done["root"]  # type: ignore[return-value]


def run_batch(root: Path, jobs: list[dict], nproc: int = 2) -> dict[str, Job]:
    """Run ``jobs`` (``name``, ``argv``, ``env``) under one ``torchrun`` of ``nproc`` ranks."""
    root.mkdir(parents=True, exist_ok=True)
    ports: set[int] = set()
    while len(ports) < len(jobs):
        ports.add(free_port())
    jobs = [
        {**j, "env": {**j["env"], "MASTER_PORT": str(p)}} for j, p in zip(jobs, ports, strict=False)
    ]
    (root / "jobs.json").write_text(json.dumps(jobs))
    (root / "driver.py").write_text(DRIVER)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    cmd += [f"--master-port={free_port()}", str(root / "driver.py"), str(root / "jobs.json")]
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with subprocess.Popen(cmd, cwd=root, env=child_env(), **pipes) as proc:
        try:
            _, stderr = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.terminate()  # torchrun passes SIGTERM on to its workers; SIGKILL would not
            _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-4000:]

    def read(name: str, what: str) -> list[str]:
        return [(root / f"{name}.{r}.{what}").read_text() for r in range(nproc)]

    jobs_ = {}
    for job in jobs:
        ends = [c.split() for c in read(job["name"], "code")]
        jobs_[job["name"]] = Job(
            root / job["name"],
            [int(code) for code, _ in ends],
            read(job["name"], "out"),
            read(job["name"], "err"),
            [float(t) for _, t in ends],
        )
    return jobs_
