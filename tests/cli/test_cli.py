"""The CLI as a user runs it: real subprocesses, exit codes, the JSON schema."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SHOP = str(Path(__file__).parents[2] / "examples" / "shop")


def nodemesh(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nodemesh.cli.main", *args],
        check=False,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_trace_json_schema_and_exit_code_zero_on_deny() -> None:
    r = nodemesh(
        "trace",
        "-f",
        SHOP,
        "--from",
        "shop/reporting",
        "--to",
        "shop/orders",
        "--port",
        "8080",
        "--method",
        "GET",
        "--path",
        "/api/v1/orders/7",
        "-o",
        "json",
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["verdict"] == "DENY"
    assert out["decided_by"]["point"] == "waypoint"
    assert out["decided_by"]["policy"] == {
        "kind": "AuthorizationPolicy",
        "namespace": "shop",
        "name": "orders-from-frontend",
    }
    assert [p["point"] for p in out["points"]] == ["source", "waypoint", "destination"]
    assert out["from"]["principal"] == "spiffe://cluster.local/ns/shop/sa/reporting"
    assert out["service"] == "shop/orders" and out["port"] == 8080


def test_trace_text_names_the_deciding_policy() -> None:
    r = nodemesh(
        "trace",
        "-f",
        SHOP,
        "--from",
        "shop/frontend",
        "--to",
        "shop/orders",
        "--port",
        "8080",
        "--method",
        "GET",
        "--path",
        "/api/v1/orders/7",
    )
    assert r.returncode == 0, r.stderr
    assert "verdict: ALLOW" in r.stdout
    assert "orders-from-frontend" in r.stdout


def test_probes_are_answered_in_order_one_json_line_each() -> None:
    probes = "\n".join(
        json.dumps(p)
        for p in (
            {
                "from": "shop/frontend",
                "to": "shop/orders",
                "port": 8080,
                "method": "GET",
                "path": "/api/v1/orders/1",
            },
            {
                "from": "shop/reporting",
                "to": "shop/orders",
                "port": 8080,
                "method": "GET",
                "path": "/api/v1/orders/1",
            },
            {
                "from": "shop/frontend",
                "to": "shop/orders",
                "port": 8080,
                "jwt_invalid": True,
                "method": "GET",
            },
        )
    )
    r = nodemesh("trace", "-f", SHOP, "--probes", "-", stdin=probes)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [line["verdict"] for line in lines][:2] == ["ALLOW", "DENY"]
    assert len(lines) == 3


def test_bad_input_exits_non_zero_with_a_clear_message() -> None:
    r = nodemesh("trace", "-f", SHOP, "--from", "shop/frontnd", "--to", "shop/orders", "--port", "8080")
    assert r.returncode == 2
    assert "no such workload" in r.stderr and "shop/frontend" in r.stderr
    r = nodemesh(
        "trace",
        "-f",
        SHOP,
        "--probes",
        "-",
        stdin='{"from": "shop/frontend", "to": "shop/orders", "prot": 1}\n',
    )
    assert r.returncode == 2 and "'port'" in r.stderr


def test_malformed_manifest_names_file_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: shop}\nspec:\n  actoin: DENY\n"
    )
    r = nodemesh("analyze", "-f", str(bad))
    assert r.returncode == 2
    assert f"{bad}:5: spec.actoin: unknown field (did you mean 'action'?)" in r.stderr


def test_analyze_exit_code_follows_errors() -> None:
    r = nodemesh("analyze", "-f", SHOP, "-o", "json")
    findings = json.loads(r.stdout)
    assert any(f["code"] == "NM302" for f in findings)  # orders-http voided by orders-allow-frontend
    has_error = any(f["severity"] == "Error" for f in findings)
    assert r.returncode == (1 if has_error else 0)
