"""The shared string match (`nodemesh.policy.conditions.StringMatch`), as Istio defines it.

Upstream: istio/istio `pilot/pkg/security/authz/matcher/string.go` `StringMatcherWithPrefix`:

    case v == "*":                   return StringMatcherRegex(".+")
    case strings.HasPrefix(v, "*"):  return StringMatcherSuffix(strings.TrimPrefix(v, "*"), false)
    case strings.HasSuffix(v, "*"):  return StringMatcherPrefix(prefix+strings.TrimSuffix(v, "*"), false)
    default:                         return StringMatcherExact(prefix+v, false)

The same order is used by `matcher/header.go` (`HeaderMatcher`, `HostMatcher`, and `PathMatcher`,
which is `StringMatcher(path)`) and by ambient's `stringToMatch`
(`pilot/pkg/serviceregistry/ambient/authorization.go`). /work/shared/reference/istio-ambient.md
§4.4: exact, prefix, suffix and presence matches; "Only a leading or trailing `*` is special."
"""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from nodemesh.policy.conditions import StringMatch
from nodemesh.policy.flow import Endpoint, FlowContext, HttpRequest
from nodemesh.policy.istio import Attribute, make_condition


def test_a_leading_star_is_checked_before_a_trailing_one() -> None:
    """string.go: `HasPrefix(v, "*")` is tested before `HasSuffix(v, "*")`, so "*a*" is a SUFFIX
    match on "a*" (the trailing `*` is a literal), not a prefix match on "*a" nor a substring
    match on "a"."""
    m = StringMatch("*a*")
    assert m.matches("a*")
    assert m.matches("xyza*")
    assert not m.matches("*abc")  # what a prefix match on "*a" would accept
    assert not m.matches("bab")  # what a substring match would accept
    assert not m.matches("a")


@given(rest=st.text(alphabet="ab*", min_size=1, max_size=5), value=st.text(alphabet="ab*", max_size=7))
def test_any_pattern_with_a_leading_star_is_a_suffix_match(rest: str, value: str) -> None:
    """string.go: `strings.HasPrefix(v, "*")` -> `StringMatcherSuffix(strings.TrimPrefix(v, "*"))`,
    whatever the rest holds (a trailing `*` included)."""
    assert StringMatch("*" + rest).matches(value) == value.endswith(rest)


def test_exact_prefix_suffix_and_presence() -> None:
    """string.go / API `Rule` doc: "abc" exact, "abc*" prefix, "*abc" suffix, "*" presence (regex
    ".+": a non-empty value); a `*` inside the value is not special."""
    assert StringMatch("abc").matches("abc") and not StringMatch("abc").matches("abcd")
    assert StringMatch("abc*").matches("abcd") and not StringMatch("abc*").matches("xabc")
    assert StringMatch("*abc").matches("xabc") and not StringMatch("*abc").matches("abcd")
    assert StringMatch("*").matches("x")
    assert not StringMatch("*").matches("")
    assert not StringMatch("*").matches(None)
    assert StringMatch("a*c").matches("a*c") and not StringMatch("a*c").matches("abc")


def test_ignore_case_keeps_the_order() -> None:
    """header.go `HostMatcher`: hosts are matched case-insensitively (`StringMatcherSuffix(v[1:],
    true)` for a leading `*`, checked before the trailing one)."""
    m = StringMatch("*.EXAMPLE.com*", ignore_case=True)
    assert m.matches("api.example.COM*")
    assert not m.matches("*.example.com.evil")


def test_istio_paths_use_the_same_order() -> None:
    """header.go: `PathMatcher(path)` is `StringMatcher(path)`, so a `paths` value "*/v1*" is a
    suffix match on "/v1*"."""
    cond = make_condition(Attribute.PATH, ["*/v1*"], negated=False, label="paths", node_proxy=False)
    src = Endpoint(ip=ipaddress.ip_address("10.0.0.1"))
    dst = Endpoint(ip=ipaddress.ip_address("10.0.0.2"))

    def on(path: str) -> bool:
        return cond.matches(FlowContext(src, dst, 80, request=HttpRequest("GET", path)))

    assert on("/api/v1*")
    assert not on("*/v1/users")
