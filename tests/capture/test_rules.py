"""The rendered in-pod ruleset and routes, checked as text against istio-cni's own rules.

Upstream: istio-ambient.md §3.2-§3.4, `IS:cni/pkg/iptables/testdata/default.golden` (iptables),
`IS:cni/pkg/nftables/testdata/default.golden` (its nftables twin) and
`IS:cni/pkg/nftables/testdata/hostprobe.golden`.
"""

from __future__ import annotations

import ipaddress

import pytest

from nodemesh.capture.errors import CaptureConfigError
from nodemesh.capture.rules import (
    PROBE_TABLE,
    TABLE,
    CaptureConfig,
    Chain,
    RuleName,
    capture_rules,
    plan_capture,
    render_probe_snat,
    render_removal,
    render_ruleset,
)

# `IS:cni/pkg/iptables/testdata/default.golden`, the rules only (istio-ambient.md §3.2).
ISTIO_INPOD_IPTABLES = (
    "-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff",
    "-A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff "
    "--ctmask 0xffffffff",
    "-A ISTIO_PRERT -s 169.254.7.127 -p tcp -m tcp -j ACCEPT",
    "-A ISTIO_OUTPUT -d 169.254.7.127 -p tcp -m tcp -j ACCEPT",
    "-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT "
    "--to-ports 15006",
    "-A ISTIO_OUTPUT ! -o lo -p udp -m mark ! --mark 0x539/0xfff -m udp --dport 53 -j REDIRECT --to-port 15053",
    "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp --dport 53 -m mark ! --mark 0x539/0xfff -j REDIRECT "
    "--to-ports 15053",
    "-A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT",
    "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT",
    "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001",
    "-A ISTIO_OUTPUT -p udp -m mark --mark 0x539/0xfff -m udp --dport 53 -j CT --zone 1",
    "-A ISTIO_PRERT -p udp -m mark ! --mark 0x539/0xfff -m udp --sport 53 -j CT --zone 1",
)


def _chain_body(ruleset: str, chain: Chain) -> list[str]:
    lines = ruleset.splitlines()
    start = lines.index(f"\tchain {chain.chain_name} {{")
    end = lines.index("\t}", start)
    return [line.strip() for line in lines[start + 1 : end]]


def _names(chain: Chain, config: CaptureConfig) -> list[str]:
    return [r.name.value for r in capture_rules(config) if r.chain is chain]


def test_every_istio_inpod_rule_has_exactly_one_twin() -> None:
    """Every rule of istio-cni's in-pod golden file (DNS capture on) is rendered once, and
    nothing else is: the capture is Istio's, not an approximation of it."""
    rules = capture_rules(CaptureConfig(capture_dns=True))
    assert sorted(r.upstream for r in rules) == sorted(ISTIO_INPOD_IPTABLES)


def test_nat_output_order_is_istios() -> None:
    """Order is the verdict in an iptables/nftables chain. istio-cni appends to ISTIO_OUTPUT: the
    probe reply accept, the DNS redirects, the 0x111 accept, the `lo` accept, then the 15001
    redirect, last, so every exemption is seen first."""
    assert _names(Chain.NAT_OUTPUT, CaptureConfig(capture_dns=True)) == [
        "probe-out",
        "dns-udp",
        "dns-tcp",
        "proxy-return",
        "loopback",
        "outbound",
    ]
    assert _names(Chain.NAT_PREROUTING, CaptureConfig()) == ["probe-in", "inbound-plaintext"]


def test_outbound_tcp_is_redirected_to_15001_unless_marked_or_localhost() -> None:
    """`-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT
    --to-ports 15001`, nftables twin `meta l4proto tcp ip daddr != 127.0.0.1/32 mark and 0xfff !=
    0x539 counter redirect to :15001`."""
    body = _chain_body(render_ruleset(CaptureConfig()), Chain.NAT_OUTPUT)
    assert body[-1] == (
        "meta l4proto tcp ip daddr != 127.0.0.1/32 meta mark & 0xfff != 0x539 counter "
        'redirect to :15001 comment "outbound"'
    )


def test_inbound_tcp_except_15008_is_redirected_to_15006() -> None:
    """`-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j
    REDIRECT --to-ports 15006`: HBONE on 15008 is never redirected (istio-ambient.md §1.1)."""
    body = _chain_body(render_ruleset(CaptureConfig()), Chain.NAT_PREROUTING)
    assert body[-1] == (
        "ip daddr != 127.0.0.1/32 tcp dport != 15008 meta mark & 0xfff != 0x539 counter "
        'redirect to :15006 comment "inbound-plaintext"'
    )


def test_connmark_and_mark_restore_use_istios_marks_and_hooks() -> None:
    """`InpodMark=1337 (0x539)/0xfff`, `InpodTProxyMark=0x111/0xfff`; the nftables golden puts the
    connmark in `type filter hook prerouting priority -150` and the restore in `type route hook
    output priority -150` (a route chain: a changed mark triggers a new route lookup)."""
    ruleset = render_ruleset(CaptureConfig())
    assert _chain_body(ruleset, Chain.MANGLE_PREROUTING) == [
        "type filter hook prerouting priority -150; policy accept;",
        'meta mark & 0xfff == 0x539 counter ct mark set ct mark & 0xfffff000 | 0x111 comment "mark-connmark"',
    ]
    assert _chain_body(ruleset, Chain.MANGLE_OUTPUT) == [
        "type route hook output priority -150; policy accept;",
        'ct mark & 0xfff == 0x111 counter meta mark set ct mark comment "restore-mark"',
    ]
    assert "type nat hook prerouting priority -100;" in ruleset
    assert "type nat hook output priority -100;" in ruleset


def test_policy_route_returns_marked_replies_to_the_local_table() -> None:
    """§3.3: `ip rule add fwmark 0x111/0xfff pref 32764 lookup 100` and `ip route replace local
    0.0.0.0/0 dev lo table 100` (IPv6: `local ::/0`, only when the pod has IPv6)."""
    plan = plan_capture(CaptureConfig())
    assert [r.add_argv() for r in plan.policy_rules] == [
        ("ip", "-4", "rule", "add", "fwmark", "0x111/0xfff", "pref", "32764", "lookup", "100")
    ]
    assert [r.add_argv() for r in plan.local_routes] == [
        ("ip", "-4", "route", "replace", "local", "0.0.0.0/0", "dev", "lo", "table", "100")
    ]
    v6 = plan_capture(CaptureConfig(ipv6=True))
    assert [r.family for r in v6.policy_rules] == [4, 6]
    assert v6.local_routes[1].add_argv()[4:6] == ("local", "::/0")
    assert plan.policy_rules[0].delete_argv()[3] == "del" and plan.local_routes[0].delete_argv()[3] == "del"


def test_dns_capture_is_off_by_default_and_complete_when_on() -> None:
    """istio-cni redirects DNS only with `REDIRECT_DNS` (per pod: `ambient.istio.io/dns-capture`);
    `dns_pod_disabled_and_on_globally.golden` has no 15053 rule and no raw table. When on, UDP
    and TCP 53 go to 15053 and the proxy's upstream DNS gets conntrack zone 1."""
    off = render_ruleset(CaptureConfig())
    assert "15053" not in off and "raw-" not in off and "udp" not in off
    on = render_ruleset(CaptureConfig(capture_dns=True))
    assert on.count("redirect to :15053") == 2
    assert _chain_body(on, Chain.RAW_OUTPUT)[0] == "type filter hook output priority -300; policy accept;"
    assert "ct zone set 1" in " ".join(_chain_body(on, Chain.RAW_OUTPUT))
    assert "ct zone set 1" in " ".join(_chain_body(on, Chain.RAW_PREROUTING))


def test_ipv6_rules_only_when_asked_for() -> None:
    """istio-cni's `AppendV6RuleIfSupported`: the `ip6` twins exist only for pods with IPv6, and
    exempt `::1/128` and the IPv6 probe address `fd16:9254:7127:1337:ffff:ffff:ffff:ffff`."""
    assert "ip6" not in render_ruleset(CaptureConfig())
    v6 = render_ruleset(CaptureConfig(ipv6=True))
    assert "ip6 daddr != ::1/128 tcp dport != 15008" in v6
    assert "ip6 saddr fd16:9254:7127:1337:ffff:ffff:ffff:ffff counter accept" in v6
    names = {r.name for r in capture_rules(CaptureConfig(ipv6=True))}
    assert {RuleName.OUTBOUND_V6, RuleName.INBOUND_PLAINTEXT_V6, RuleName.LOOPBACK_V6} <= names


def test_ruleset_is_one_atomic_replace_of_one_table() -> None:
    """Like istio-cni's `add table` + `flush table` transaction, applied with one `nft -f`; here
    `add` then `delete` then the definition, so stale chains of an older config cannot survive."""
    text = render_ruleset(CaptureConfig())
    assert text.startswith(f"add table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n")
    assert text.count("table inet") == 3
    assert render_removal() == f"add table inet {TABLE}\ndelete table inet {TABLE}\n"


def test_custom_ports_and_marks_are_rendered_everywhere() -> None:
    """Every port and mark comes from the config (istio-cni reads them from `config.go`)."""
    config = CaptureConfig(
        outbound_port=16001,
        inbound_plaintext_port=16006,
        inbound_hbone_port=16008,
        mark=0x123,
        connmark=0x222,
    )
    text = render_ruleset(config)
    assert "redirect to :16001" in text and "redirect to :16006" in text and "dport != 16008" in text
    assert "!= 0x123" in text and "== 0x222" in text
    assert "0x539" not in text and "0x111" not in text and "15001" not in text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"outbound_port": 15006}, "must differ"),
        ({"inbound_hbone_port": 0}, "not a TCP port"),
        ({"mark": 0x1539}, "inside mask"),
        ({"connmark": 0x539}, "must differ"),
        ({"route_table": 254}, "free table id"),
        ({"rule_priority": 32766}, "before the main table"),
        ({"probe_source_v4": "not-an-ip"}, "probe source"),
    ],
)
def test_configurations_that_cannot_work_are_refused(kwargs: dict[str, object], message: str) -> None:
    """A clash would silently break capture (e.g. 15008 redirected to itself), so it is refused."""
    with pytest.raises(CaptureConfigError, match=message):
        CaptureConfig(**kwargs)  # type: ignore[arg-type]


def test_host_probe_snat_matches_istios_hostprobe_rule() -> None:
    """`hostprobe.golden`: `meta l4proto tcp skuid 1000 ip daddr @istio-inpod-probes-v4 counter
    snat to 169.254.7.127`, the set holding the ambient pods' IPs."""
    pods = [ipaddress.IPv4Address("10.244.0.10"), ipaddress.IPv4Address("10.244.0.2")]
    text = render_probe_snat(pods, prober_uid=1000)
    assert text.startswith(f"add table inet {PROBE_TABLE}\ndelete table inet {PROBE_TABLE}\n")
    assert "elements = { 10.244.0.2, 10.244.0.10 }" in text  # address order, not string order
    assert "type nat hook postrouting priority 100;" in text
    assert (
        "meta l4proto tcp meta skuid 1000 ip daddr @inpod-probes-v4 counter snat ip to 169.254.7.127" in text
    )
    assert "ip6" not in text
    empty = render_probe_snat([])
    assert "elements" not in empty and "type ipv4_addr" in empty
    assert "snat ip6 to fd16:9254:7127:1337:ffff:ffff:ffff:ffff" in render_probe_snat(
        [ipaddress.IPv6Address("fd00::2")], config=CaptureConfig(ipv6=True)
    )


def test_every_rule_is_named_for_counters() -> None:
    """Each rule carries a unique `comment`, so `nft -j` counters say which rule a packet took."""
    rules = capture_rules(CaptureConfig(capture_dns=True, ipv6=True))
    assert len({r.name for r in rules}) == len(rules) == len(RuleName)
    assert all(f'comment "{r.name.value}"' in r.render() and " counter " in r.render() for r in rules)
