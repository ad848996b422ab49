"""`nodemesh apply/get/delete` against a real control plane process over its admin socket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from nodemesh.cli.main import main
from tests.controlplane.conftest import SHOP
from tests.controlplane.harness import ControlPlaneProcess


@pytest.fixture
def controlplane(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    cp = ControlPlaneProcess(tmp_path / "cp", "127.0.0.1:0").start()
    try:
        yield cp
    finally:
        cp.stop()


def run(capsys: pytest.CaptureFixture[str], cp: ControlPlaneProcess, *args: str) -> tuple[int, str, str]:
    code = main([*args, "--controlplane", cp.admin])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_apply_get_delete_round_trip(
    controlplane: ControlPlaneProcess, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """apply creates, re-apply is a no-op ("unchanged", as kubectl apply), get shows what is
    stored (with resourceVersion), `get -o yaml` output applies back unchanged, delete removes."""
    code, out, _ = run(capsys, controlplane, "apply", "-f", str(SHOP))
    assert code == 0 and "deployment.apps/orders created" in out
    code, out, _ = run(capsys, controlplane, "apply", "-f", str(SHOP))
    assert code == 0 and set(line.rsplit(" ", 1)[1] for line in out.splitlines()) == {"unchanged"}

    code, out, _ = run(capsys, controlplane, "get", "deploy", "-n", "shop")
    assert code == 0 and [line.split()[0] for line in out.splitlines()[1:]] == [
        "frontend",
        "orders",
        "reporting",
    ]
    code, out, _ = run(capsys, controlplane, "get", "cnp", "-n", "shop", "orders-http", "-o", "yaml")
    doc = yaml.safe_load(out)
    assert doc["kind"] == "CiliumNetworkPolicy" and doc["metadata"]["resourceVersion"] == "1"

    code, out, _ = run(capsys, controlplane, "get", "deployments", "-A", "-o", "yaml")
    listing = tmp_path / "listing.yaml"
    listing.write_text(out)
    code, out, _ = run(capsys, controlplane, "apply", "-f", str(listing))
    assert code == 0 and out.count("unchanged") == 3

    code, out, _ = run(capsys, controlplane, "delete", "cnp", "orders-http", "-n", "shop")
    assert code == 0 and out.strip() == "ciliumnetworkpolicy.cilium.io/orders-http deleted"
    code, _, err = run(capsys, controlplane, "get", "cnp", "orders-http", "-n", "shop")
    assert code == 1 and 'ciliumnetworkpolicies "orders-http" not found' in err
    code, out, _ = run(capsys, controlplane, "delete", "-f", str(SHOP / "00-namespace.yaml"))
    assert code == 0
    code, out, _ = run(capsys, controlplane, "get", "pods", "-A")
    assert "No resources found" in out


def test_bad_batch_via_cli_names_file_line_path_and_changes_nothing(
    controlplane: ControlPlaneProcess, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The issue: "one bad document rejects the batch with file, line and field path, and the
    store is unchanged"."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: x, namespace: shop}\nspec:\n  portz: []\n"
    )
    code, _, err = run(capsys, controlplane, "apply", "-f", str(SHOP), "-f", str(bad))
    assert code == 2
    assert f"{bad}:5: spec.portz: unknown field (did you mean 'ports'?)" in err
    code, out, _ = run(capsys, controlplane, "get", "deploy", "-A")
    assert "No resources found" in out
    code, out, _ = run(capsys, controlplane, "controlplane", "status")
    assert code == 0 and out.startswith("revision 0")
