"""Loading manifests: multi-document files, directories, stdin, and errors that name the line."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from nodemesh.errors import ManifestError
from nodemesh.model.loader import format_path, load_paths, load_text
from nodemesh.model.validate import load_documents, parse_documents

NS = """apiVersion: v1
kind: Namespace
metadata:
  name: shop
"""


def test_multi_document_text_keeps_each_documents_lines() -> None:
    docs = load_text(NS + "---\n" + NS.replace("shop", "other"), "a.yaml")
    assert [d.body["metadata"] for d in docs] == [{"name": "shop"}, {"name": "other"}]  # type: ignore[index]
    assert docs[1].location.line == 6
    assert docs[1].location.line_of(("metadata", "name")) == 9


def test_directory_is_loaded_recursively_in_sorted_order(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.yaml").write_text(NS.replace("shop", "two"))
    (tmp_path / "1.yml").write_text(NS.replace("shop", "one"))
    (tmp_path / "notes.txt").write_text("not a manifest")
    docs = load_documents([str(tmp_path)])
    assert [d.name for d in docs] == ["one", "two"]


def test_stdin_is_read_for_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(NS))
    docs = load_paths(["-"])
    assert docs[0].location.file == "<stdin>"


def test_invalid_yaml_names_file_and_line() -> None:
    with pytest.raises(ManifestError) as err:
        load_text("apiVersion: v1\nkind: [unclosed\n", "bad.yaml")
    problem = err.value.problems[0]
    assert problem.file == "bad.yaml"
    assert problem.line >= 2
    assert "not valid YAML" in problem.message


def test_missing_file_is_an_error() -> None:
    with pytest.raises(ManifestError, match="no such file"):
        load_paths(["/nonexistent/x.yaml"])


def test_format_path() -> None:
    assert format_path(("spec", "rules", 0, "from")) == "spec.rules[0].from"


def test_misspelt_field_names_line_path_and_closest_name() -> None:
    text = (
        NS
        + "---\napiVersion: v1\nkind: Service\nmetadata: {name: orders, namespace: shop}\nspec:\n  selectr: {app: x}\n"
    )
    with pytest.raises(ManifestError) as err:
        parse_documents(load_text(text, "svc.yaml"))
    (problem,) = err.value.problems
    assert (problem.file, problem.line, problem.path) == ("svc.yaml", 10, "spec.selectr")
    assert problem.message == "unknown field"
    assert "'selector'" in problem.hint


def test_one_bad_document_rejects_the_whole_batch_and_lists_every_problem() -> None:
    text = (
        NS
        + "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: Bad_Name}\n---\napiVersion: v9\nkind: Pod\n"
    )
    with pytest.raises(ManifestError) as err:
        parse_documents(load_text(text, "x.yaml"))
    paths = sorted(p.path for p in err.value.problems)
    assert paths == ["apiVersion", "metadata.name"]
    assert "nothing was applied" in str(err.value)


def test_unknown_kind_suggests_the_closest_kind() -> None:
    with pytest.raises(ManifestError) as err:
        parse_documents(load_text("apiVersion: v1\nkind: Servce\nmetadata: {name: a}\n", "k.yaml"))
    assert "'Service'" in err.value.problems[0].hint


def test_kubectl_list_output_is_unwrapped() -> None:
    text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: a, uid: x}\n"
    (doc,) = parse_documents(load_text(text, "list.yaml"))
    assert doc.name == "a"
    assert doc.location.line == 4


def test_deployment_selector_must_match_template() -> None:
    """Kubernetes rejects a Deployment whose selector does not match its template labels
    (apps/v1 validation: "selector does not match template labels")."""
    text = """apiVersion: apps/v1
kind: Deployment
metadata: {name: d}
spec:
  selector: {matchLabels: {app: a}}
  template:
    metadata: {labels: {app: b}}
    spec: {containers: [{name: c}]}
"""
    with pytest.raises(ManifestError) as err:
        parse_documents(load_text(text, "d.yaml"))
    assert err.value.problems[0].path == "spec.selector"
    assert err.value.problems[0].line == 5
