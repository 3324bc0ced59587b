"""A real two-node Ray cluster on this machine (two raylets, Ray's token authentication on, as the README's
recipe starts one): `sweep run --address` places trials on both nodes, and the driver's store holds every
result."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from results.store import Store
from tests.conftest import tiny_spec

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def two_nodes(tmp_path):
    """Head and worker node started as the README starts them, but with `--block`: each `ray start` process
    owns its node, and stopping it stops that node only (`ray stop` would stop any Ray on the machine)."""
    # Ray >= 2.59 authenticates with a token: every node and the driver need the same one.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    head = _start(["--head", f"--port={port}", "--include-dashboard=false", "--disable-usage-stats"], env, tmp_path)
    nodes = [head]
    try:
        _wait_for_nodes(address, env, 1)
        nodes.append(_start([f"--address={address}"], env, tmp_path))
        _wait_for_nodes(address, env, 2)
        yield address, env
    finally:
        for node in reversed(nodes):
            node.send_signal(signal.SIGTERM)
            node.wait(timeout=120)


def _start(args: list[str], env: dict, tmp_path: Path) -> subprocess.Popen:
    log = open(tmp_path / f"ray-{len(list(tmp_path.glob('ray-*')))}.log", "w")
    return subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--block", "--num-cpus=1", *args],
                            env=env, stdout=log, stderr=subprocess.STDOUT)


def _wait_for_nodes(address: str, env: dict, count: int) -> None:
    probe = ("import ray, sys, time\n"
             f"ray.init(address={address!r}, logging_level='ERROR')\n"
             f"for _ in range(120):\n"
             f"    if sum(n['Alive'] for n in ray.nodes()) >= {count}: sys.exit(0)\n"
             f"    time.sleep(0.5)\n"
             "sys.exit(1)")
    for _ in range(60):  # the head's GCS may not listen yet
        if subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, timeout=120).returncode == 0:
            return
        time.sleep(1)
    raise AssertionError(f"the cluster at {address} never had {count} node(s)")


def test_a_sweep_runs_across_two_nodes_through_address(two_nodes, tiny_model_dir, local_data, tmp_path):
    address, env = two_nodes
    raw = tiny_spec(tiny_model_dir, *local_data, tmp_path)  # 2 prompts: 2 fine-tunes at once, one per node
    raw["search"]["baselines"] = False
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw), encoding="utf-8")
    run = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", str(spec), "--address", address, "--quiet"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    trials = Store(raw["output"]["store"]).summary("tiny").trials
    assert len(trials) == 2 and all(t.status == "completed" and t.metrics for t in trials)
    nodes = {t.environment["node"] for t in trials}
    assert len(nodes) == 2, nodes  # each node ran trials; every result is in the driver's store
