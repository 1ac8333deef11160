"""A real multi-node Ray cluster on 127.0.0.1: one `ray start` per node, each its own raylet.

Every `ray`/`serve` command runs with RAY_AUTH_MODE=token (`ray start` clusters here use token
authentication) and a token generated for this cluster (RAY_AUTH_TOKEN_PATH). Each node gets its own ports, so several fit on one machine. `stop()` ends every
Ray process on the machine (`ray stop --force`), so it is called even when a test fails.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from serve_app.launch.harness import REPO, free_port
from serve_app.launch.processes import descendants, kill_all, process_name, processes

RAY_CLI = str(Path(sys.executable).with_name("ray"))
SERVE_CLI = str(Path(sys.executable).with_name("serve"))


@dataclass
class Node:
    name: str
    node_manager_port: int
    node_id: str | None = None


class LocalCluster:
    def __init__(self, extra_env: dict[str, str] | None = None):
        self.workdir = Path(tempfile.mkdtemp(prefix="ray-cluster-test-"))
        token = self.workdir / "auth_token"  # the cluster's own token: a clean machine has none
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        self.env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SERVE_APP_WEIGHTS", "RAY_AUTH_TOKEN")}
        self.env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), **(extra_env or {})})
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.nodes: dict[str, Node] = {}

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, name: str, args: list[str], num_cpus: int, resources: dict | None) -> None:
        node = Node(name, free_port())
        ports = ["--node-manager-port", node.node_manager_port, "--object-manager-port", free_port(),
                 "--dashboard-agent-listen-port", free_port(), "--dashboard-agent-grpc-port", free_port(),
                 "--metrics-export-port", free_port(), "--runtime-env-agent-port", free_port()]
        command = [RAY_CLI, "start", *args, "--node-ip-address", "127.0.0.1", "--num-cpus", str(num_cpus),
                   "--resources", json.dumps({f"node:{name}": 1, **(resources or {})}), "--disable-usage-stats",
                   *map(str, ports)]
        self.run(command, timeout=120)
        self.nodes[name] = node

    def start_head(self, num_cpus: int, resources: dict | None = None) -> None:
        self._start("head", ["--head", "--port", str(self.gcs_port), "--dashboard-host", "127.0.0.1",
                             "--dashboard-port", str(self.dashboard_port), "--include-dashboard", "true"],
                    num_cpus, resources)

    def add_worker(self, name: str, num_cpus: int, resources: dict | None = None) -> None:
        self._start(name, ["--address", f"127.0.0.1:{self.gcs_port}"], num_cpus, resources)

    def run(self, command: list[str], timeout: float = 120) -> str:
        result = subprocess.run(command, env=self.env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command[:3])} failed ({result.returncode}):\n{result.stdout[-2000:]}"
                               f"\n{result.stderr[-3000:]}")
        return result.stdout

    def serve_deploy(self, config: dict) -> None:
        path = self.workdir / f"deploy-{time.monotonic_ns()}.yaml"
        path.write_text(yaml.safe_dump(config))
        self.run([SERVE_CLI, "deploy", str(path), "--address", self.dashboard])

    def serve_app_deploy(self, config: dict, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """`python -m serve_app deploy`: checks the config against the nodes, deploys, watches it start.
        `env`: variables set in the deploying shell only (the cluster's nodes never see them)."""
        path = self.workdir / f"deploy-{time.monotonic_ns()}.yaml"
        path.write_text(yaml.safe_dump(config))
        return subprocess.run([sys.executable, "-m", "serve_app", "deploy", str(path), "--address",
                               f"127.0.0.1:{self.gcs_port}"], env={**self.env, **(env or {})}, cwd=REPO,
                              capture_output=True, text=True, timeout=300)

    def serve_shutdown(self) -> None:
        """Every Serve application and Serve itself gone: the next deploy starts on empty nodes."""
        self.run([SERVE_CLI, "shutdown", "--yes", "--address", self.dashboard])

    def serve_status(self) -> dict:
        return yaml.safe_load(self.run([SERVE_CLI, "status", "--address", self.dashboard]))

    def replica_nodes(self, deployment: str) -> list[str]:
        """Node names of the deployment's live replicas (via each actor's node resources)."""
        out = self.run([RAY_CLI, "list", "actors", "--address", self.dashboard, "--format", "json", "--detail",
                        "--limit", "10000", "--filter", "state=ALIVE"])
        node_names = self.node_names_by_id()
        return [node_names.get(actor["node_id"], actor["node_id"]) for actor in json.loads(out)
                if actor["class_name"].endswith(f":{deployment}")]

    def node_names_by_id(self) -> dict[str, str]:
        out = self.run([RAY_CLI, "list", "nodes", "--address", self.dashboard, "--format", "json", "--detail"])
        names = {}
        for node in json.loads(out):
            for resource in node.get("resources_total", {}):
                if resource.startswith("node:") and resource[5:] in self.nodes:
                    names[node["node_id"]] = resource[5:]
        return names

    def kill_node(self, name: str) -> None:
        """SIGKILL the node's raylet and everything it started, as if the machine vanished."""
        port_flag = f"--node_manager_port={self.nodes[name].node_manager_port}"
        raylets = [p.pid for p in processes() if "raylet" in p.command and port_flag in p.command]
        assert len(raylets) == 1, f"expected one raylet for {name}, found {raylets}"
        kill_all([raylets[0], *descendants(raylets[0])])
        del self.nodes[name]

    def stop(self) -> None:
        """`serve shutdown` first: it stops the HAProxy that Serve runs on the head (RAY_ENV), which
        `ray stop` alone leaves running. Any that outlive both are killed."""
        raylets = [p.pid for p in processes() if "raylet" in p.command and self._owns(p.command)]
        haproxies = [pid for raylet in raylets for pid in descendants(raylet) if process_name(pid) == "haproxy"]
        subprocess.run([SERVE_CLI, "shutdown", "--yes", "--address", self.dashboard], env=self.env,
                       capture_output=True, timeout=120)
        subprocess.run([RAY_CLI, "stop", "--force"], env=self.env, capture_output=True, timeout=120)
        kill_all(haproxies)

    def _owns(self, command_line: str) -> bool:
        return any(f"--node_manager_port={node.node_manager_port}" in command_line for node in self.nodes.values())
