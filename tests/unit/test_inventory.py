"""rollwave.inventory: rollwave YAML, Ansible INI and YAML inventories, host patterns."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollwave.errors import InventoryError
from rollwave.inventory import Inventory, Target, load_inventory, select
from rollwave.inventory.load import parse_ansible_yaml, parse_ini, parse_rollwave_yaml
from rollwave.inventory.patterns import pattern_problems

Parser = Callable[[str | bytes, str], Inventory]


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def problems(parse: Parser, text: str, source: str = "inv") -> list[str]:
    """The problem lines ``parse`` reports for ``text``, asserting it fails."""
    with pytest.raises(InventoryError) as caught:
        parse(dedent(text), source)
    return [str(problem) for problem in caught.value.problems]


def names(targets: list[Target]) -> list[str]:
    return [target.name for target in targets]


# --------------------------------------------------------------------------- Ansible INI

FLEET_INI = dedent(
    """
    # a comment
    ; another comment
    jump ansible_host=203.0.113.7 ansible_user=ops

    [web]
    web[01:03].example.com http_port=8001
    web01.example.com canary=True   # listed twice: merged, not duplicated

    [db]
    db-[a:b] ansible_port=2222

    [eu:children]
    web
    db

    [prod:children]
    eu

    [eu:vars]
    zone=eu-1
    http_port=9000

    [prod:vars]
    zone=prod
    tier = 'gold'

    [all:vars]
    ansible_user=deploy
    zone=none
    """
)


def test_ini_groups_include_children_hosts_in_inventory_order() -> None:
    """Every group maps to all its hosts, children's included, in first-appearance order."""
    inventory = parse_ini(FLEET_INI, "fleet.ini")
    webs = ("web01.example.com", "web02.example.com", "web03.example.com")
    assert list(inventory.targets) == ["jump", *webs, "db-a", "db-b"]
    assert inventory.groups == {
        "all": ("jump", *webs, "db-a", "db-b"),
        "ungrouped": ("jump",),
        "web": webs,
        "db": ("db-a", "db-b"),
        "eu": (*webs, "db-a", "db-b"),
        "prod": (*webs, "db-a", "db-b"),
    }


@pytest.mark.parametrize(
    ("name", "groups"),
    [
        pytest.param("jump", ("all", "ungrouped"), id="ungrouped-host"),
        pytest.param("web02.example.com", ("all", "eu", "prod", "web"), id="grandchild"),
        pytest.param("db-b", ("all", "db", "eu", "prod"), id="other-branch"),
    ],
)
def test_ini_target_groups_are_sorted_and_transitive(name: str, groups: tuple[str, ...]) -> None:
    """A target lists every group it is in, directly or through children, sorted."""
    assert parse_ini(FLEET_INI, "fleet.ini").target(name).groups == groups


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param(
            "jump",
            {"address": "203.0.113.7", "port": None, "user": "ops", "zone": "none"},
            id="host-vars-over-all",
        ),
        pytest.param(
            "web01.example.com",
            {"address": "web01.example.com", "user": "deploy", "zone": "eu-1", "http_port": 8001},
            id="child-group-over-parent-host-over-group",
        ),
        pytest.param(
            "db-a",
            {"port": 2222, "zone": "eu-1", "http_port": 9000, "tier": "gold"},
            id="group-vars-inherited",
        ),
    ],
)
def test_ini_variable_precedence(name: str, expected: dict[str, Any]) -> None:
    """Host vars beat child-group vars, which beat parent-group vars, which beat all's."""
    target = parse_ini(FLEET_INI, "fleet.ini").target(name)
    seen = {"address": target.address, "port": target.port, "user": target.user, **target.vars}
    assert {key: seen.get(key) for key in expected} == expected


def test_ini_hosts_listed_twice_merge_their_variables() -> None:
    """A host named on two lines keeps both lines' variables and its first line."""
    inventory = parse_ini(FLEET_INI, "fleet.ini")
    assert inventory.target("web01.example.com").vars["canary"] is True
    assert inventory.lines["web01.example.com"] == 6


def test_ini_lines_name_hosts_and_groups() -> None:
    """Inventory.lines maps hosts and groups to the line defining them."""
    lines = parse_ini(FLEET_INI, "fleet.ini").lines
    expected = {"jump": 3, "web02.example.com": 6, "db-b": 10, "web": 5, "eu": 12, "prod": 16}
    assert {name: lines[name] for name in expected} == expected


@pytest.mark.parametrize(
    ("line", "hosts"),
    [
        pytest.param("web[01:03].example.com", ["web01", "web02", "web03"], id="zero-padded"),
        pytest.param("web[8:11].example.com", ["web8", "web9", "web10", "web11"], id="plain"),
        pytest.param("web[:2].example.com", ["web0", "web1", "web2"], id="begin-defaults-to-0"),
        pytest.param("web[1:10:4].example.com", ["web1", "web5", "web9"], id="step"),
        pytest.param("web-[a:c].example.com", ["web-a", "web-b", "web-c"], id="letters"),
        pytest.param("web[a:e:2].example.com", ["weba", "webc", "webe"], id="letters-step"),
        pytest.param(
            "r[1:2]-web[a:b].example.com",
            ["r1-weba", "r1-webb", "r2-weba", "r2-webb"],
            id="two-ranges-first-slowest",
        ),
    ],
)
def test_ini_host_ranges(line: str, hosts: list[str]) -> None:
    """Host ranges expand like Ansible's: padding kept, letters, steps, several ranges."""
    inventory = parse_ini(f"[web]\n{line}\n", "inv")
    assert list(inventory.targets) == [f"{host}.example.com" for host in hosts]


def test_ini_host_port_suffix_sets_the_port() -> None:
    """``host:port`` (ranges included) gives the port, and ansible_port on the line wins."""
    inventory = parse_ini("a[1:2]:2201\nb:2202 ansible_port=22\n", "inv")
    assert [(t.name, t.port) for t in inventory.targets.values()] == [
        ("a1", 2201),
        ("a2", 2201),
        ("b", 22),
    ]


@pytest.mark.parametrize(
    ("assignment", "value"),
    [
        pytest.param("v=8001", 8001, id="int"),
        pytest.param("v=-3", -3, id="negative-int"),
        pytest.param("v=1.5", 1.5, id="float"),
        pytest.param("v=True", True, id="True-is-bool"),
        pytest.param("v=False", False, id="False-is-bool"),
        pytest.param("v=true", "true", id="lowercase-true-stays-text-as-in-ansible"),
        pytest.param("v=eu-1", "eu-1", id="text"),
        pytest.param("v=10.0.0.1", "10.0.0.1", id="address-stays-text"),
        pytest.param("v='a b'", "a b", id="single-quoted"),
        pytest.param('v="a b"', "a b", id="double-quoted"),
        pytest.param("v=\"'8001'\"", "8001", id="quoted-number-stays-text"),
        pytest.param("v=[1,2]", [1, 2], id="list"),
        pytest.param("v=(1,2)", [1, 2], id="tuple-becomes-list"),
        pytest.param("v=1j", "1j", id="complex-stays-text"),
        pytest.param("v=", "", id="empty"),
        pytest.param("v=a=b", "a=b", id="equals-in-value"),
    ],
)
def test_ini_host_variable_values(assignment: str, value: Any) -> None:
    """Inline host values are read as Ansible reads them: Python literals, else text."""
    target = parse_ini(f"h {assignment}\n", "inv").target("h")
    assert target.vars["v"] == value
    assert type(target.vars["v"]) is type(value)


@pytest.mark.parametrize(
    ("line", "value"),
    [
        pytest.param("v=8001", 8001, id="int"),
        pytest.param("v = a b # not a comment", "a b # not a comment", id="rest-of-line"),
        pytest.param("v='x'", "x", id="quoted"),
        pytest.param("ansible_host=127.10", "127.10", id="ansible_host-always-text"),
    ],
)
def test_ini_group_variable_values(line: str, value: Any) -> None:
    """``[group:vars]`` values are the rest of the line, read as a literal when they are one."""
    target = parse_ini(f"[g]\nh\n[g:vars]\n{line}\n", "inv").target("h")
    assert target.vars[line.split("=")[0].strip()] == value


def test_ini_empty_group_and_all_hosts() -> None:
    """An empty group exists with no hosts; ``ungrouped`` is left out when empty."""
    inventory = parse_ini("[web]\n[db]\ndb1\n", "inv")
    assert inventory.groups == {"all": ("db1",), "web": (), "db": ("db1",)}


def test_ini_host_in_a_group_leaves_ungrouped() -> None:
    """A host first listed before any section but also in a group is not ungrouped."""
    inventory = parse_ini("h1\nh2\n[web]\nh1\n", "inv")
    assert inventory.groups["ungrouped"] == ("h2",)
    assert inventory.target("h1").groups == ("all", "web")


def test_ini_group_priority_breaks_ties_between_siblings() -> None:
    """Sibling groups merge by name unless ansible_group_priority says otherwise."""
    text = "[a]\nh\n[b]\nh\n[a:vars]\nv=a\n[b:vars]\nv=b\n"
    assert parse_ini(text, "inv").target("h").vars["v"] == "b"
    prioritised = text + "[a:vars]\nansible_group_priority=5\n"
    assert parse_ini(prioritised, "inv").target("h").vars["v"] == "a"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            """
            [prod:children]
            web
            db   # never defined
            [web]
            w1
            """,
            ["inv:3:1: group 'db' in [prod:children] is never defined"],
            id="undefined-child",
        ),
        pytest.param(
            """
            [a:children]
            b
            [b:children]
            c
            [c:children]
            a
            """,
            ["inv:6:1: group 'a' contains itself: a -> b -> c -> a"],
            id="cycle",
        ),
        pytest.param(
            "[a:children]\na\n",
            ["inv:2:1: group 'a' contains itself: a -> a"],
            id="self-child",
        ),
        pytest.param(
            "[a:children]\nall\n",
            ["inv:2:1: group 'all' cannot be a child of group 'a'"],
            id="all-as-child",
        ),
        pytest.param(
            "[db:vars]\nx=1\n",
            ["inv:1:1: section [db:vars] is for group 'db', which is never defined"],
            id="vars-for-undefined-group",
        ),
        pytest.param(
            "h1 port=1\nh2 foo\n  h3 'unclosed\n",
            [
                "inv:2:4: expected key=value host variable, got 'foo'",
                "inv:3:3: cannot parse host line: No closing quotation",
            ],
            id="bad-host-lines",
        ),
        pytest.param(
            "h =1\n",
            ["inv:1:3: expected key=value host variable, got '=1'"],
            id="empty-key",
        ),
        pytest.param(
            "h ansible_port=ssh\ni ansible_port=70000\nj ansible_port=True\n",
            [
                "inv:1:3: ansible_port must be an integer, got 'ssh'",
                "inv:2:3: ansible_port must be between 1 and 65535, got 70000",
                "inv:3:3: ansible_port must be an integer, got True",
            ],
            id="bad-ansible_port",
        ),
        pytest.param(
            "[g]\nh\n[g:vars]\nansible_port=x\n",
            ["inv:4:1: ansible_port must be an integer, got 'x'"],
            id="bad-group-ansible_port",
        ),
        pytest.param(
            "h:ssh\ni:\n",
            [
                "inv:1:1: port 'ssh' of host pattern 'h:ssh' is not between 1 and 65535",
                "inv:2:1: host pattern 'i:' ends with ':' but gives no port"
                " (is this a YAML inventory? name it .yml)",
            ],
            id="bad-port-suffix",
        ),
        pytest.param(
            "web1 ansible_host=10.0.0.1\n[web]\nweb1 ansible_host=10.0.0.2\n",
            [
                "inv:3:6: host 'web1' is defined again with ansible_host '10.0.0.2',"
                " but line 1 gave '10.0.0.1'"
            ],
            id="conflicting-address",
        ),
        pytest.param(
            "[web servers]\n[web:hosts:x]\n[web:extra]\n",
            [
                "inv:1:1: invalid section header '[web servers]'",
                "inv:2:1: invalid section header '[web:hosts:x]'",
                "inv:3:1: section [web:extra] has unknown type 'extra' (expected children or vars)",
            ],
            id="bad-sections",
        ),
        pytest.param(
            "[a:children]\nb c\n[b]\n[g:vars]\nnovalue\n[g]\n",
            [
                "inv:2:1: expected a group name, got 'b c'",
                "inv:5:1: expected key=value, got 'novalue'",
            ],
            id="bad-children-and-vars-lines",
        ),
        pytest.param(
            """
            w[1]
            w[1:2:3:4]
            w[1:]
            w[a:5]
            w[01:100]
            w[5:1]
            w[c:a]
            w[1:3:0]
            w[1:2
            w[0:99999]
            """,
            [
                "inv:1:1: bad host range '[1]' in 'w[1]': expected [begin:end] or [begin:end:step]",
                "inv:2:1: bad host range '[1:2:3:4]' in 'w[1:2:3:4]':"
                " expected [begin:end] or [begin:end:step]",
                "inv:3:1: bad host range '[1:]' in 'w[1:]': the range has no end",
                "inv:4:1: bad host range '[a:5]' in 'w[a:5]':"
                " begin and end must both be numbers or both single letters",
                "inv:5:1: bad host range '[01:100]' in 'w[01:100]':"
                " a zero-padded begin and its end must have the same width",
                "inv:6:1: bad host range '[5:1]' in 'w[5:1]': begin 5 comes after end 1",
                "inv:7:1: bad host range '[c:a]' in 'w[c:a]': begin 'c' comes after end 'a'",
                "inv:8:1: bad host range '[1:3:0]' in 'w[1:3:0]':"
                " the step must be a positive integer",
                "inv:9:1: bad host range in 'w[1:2': unbalanced '[' or ']'",
                "inv:10:1: host range 'w[0:99999]' expands to more than 10000 hosts",
            ],
            id="bad-ranges",
        ),
        pytest.param(
            "all:\n  hosts:\n---\n",
            [
                "inv:1:1: host pattern 'all:' ends with ':' but gives no port"
                " (is this a YAML inventory? name it .yml)",
                "inv:2:3: host pattern 'hosts:' ends with ':' but gives no port"
                " (is this a YAML inventory? name it .yml)",
                "inv:3:1: '---' is not a host name (is this a YAML inventory? name it .yml)",
            ],
            id="yaml-in-ini",
        ),
        pytest.param(
            "'a b'\n[a,b]\n",
            [
                "inv:1:1: host name 'a b' contains whitespace",
                "inv:2:1: group name 'a,b' contains ','",
            ],
            id="unselectable-names",
        ),
    ],
)
def test_ini_errors(text: str, expected: list[str]) -> None:
    """Each INI mistake is one problem naming file, line and column, in line order."""
    assert problems(parse_ini, text) == expected


# --------------------------------------------------------------------------- Ansible YAML

FLEET_YAML = dedent(
    """
    all:
      vars:
        ansible_user: deploy
        zone: none
      hosts:
        jump:
          ansible_host: 203.0.113.7
      children:
        prod:
          vars: {zone: prod}
          children:
            eu:
              vars: {zone: eu-1, http_port: 9000}
              children:
                web:
                  hosts:
                    web[1:2]:
                      http_port: 8001
                    web3:
                db:
                  hosts:
                    db1: {ansible_port: "2222"}
    canary:
      hosts:
        web2:
    """
)


def test_ansible_yaml_nesting_builds_groups_and_membership() -> None:
    """Nested children groups hold their descendants' hosts; top-level groups join all."""
    inventory = parse_ansible_yaml(FLEET_YAML, "fleet.yml")
    assert inventory.groups == {
        "all": ("jump", "web1", "web2", "web3", "db1"),
        "ungrouped": ("jump",),
        "prod": ("web1", "web2", "web3", "db1"),
        "eu": ("web1", "web2", "web3", "db1"),
        "web": ("web1", "web2", "web3"),
        "db": ("db1",),
        "canary": ("web2",),
    }
    assert inventory.target("web2").groups == ("all", "canary", "eu", "prod", "web")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param(
            "jump",
            {"address": "203.0.113.7", "user": "deploy", "zone": "none"},
            id="all-vars-and-host-address",
        ),
        pytest.param("web1", {"zone": "eu-1", "http_port": 8001}, id="host-over-deepest-group"),
        pytest.param("web3", {"zone": "eu-1", "http_port": 9000}, id="range-free-host"),
        pytest.param("db1", {"port": 2222, "zone": "eu-1"}, id="port-string-to-int"),
    ],
)
def test_ansible_yaml_variable_precedence(name: str, expected: dict[str, Any]) -> None:
    """YAML inventories follow the same precedence: all < parent < child < host."""
    target = parse_ansible_yaml(FLEET_YAML, "fleet.yml").target(name)
    seen = {"address": target.address, "port": target.port, "user": target.user, **target.vars}
    assert {key: seen.get(key) for key in expected} == expected


def test_ansible_yaml_lines_and_shorthands() -> None:
    """A name under hosts or children may be a bare string; lines point at the defining key."""
    inventory = parse_ansible_yaml("web:\n  hosts: w1\nall:\n  children: web\n", "inv.yml")
    assert inventory.groups == {"all": ("w1",), "web": ("w1",)}
    assert inventory.lines == {"web": 1, "all": 3, "w1": 2}


def test_ansible_yaml_yaml_types_and_anchors() -> None:
    """Host variables keep YAML types, and anchors with merge keys work."""
    text = """
    all:
      hosts:
        a: &base {port_list: [1, 2], enabled: true, ratio: 0.5}
        b: {<<: *base, enabled: false}
    """
    inventory = parse_ansible_yaml(dedent(text), "inv.yml")
    assert dict(inventory.target("a").vars) == {
        "port_list": [1, 2],
        "enabled": True,
        "ratio": 0.5,
    }
    assert inventory.target("b").vars["enabled"] is False


def test_empty_ansible_yaml_is_an_empty_inventory() -> None:
    """An empty YAML document is an inventory with no target."""
    assert parse_ansible_yaml("", "inv.yml").groups == {"all": ()}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "all:\n  hosts:\n    a: 1\n  childs: {}\n",
            [
                "inv.yml:3:8: all.hosts.a: host variables must be a mapping of variable names"
                " to values, got 1",
                "inv.yml:4:3: all.childs: unknown key 'childs' (did you mean 'children'?);"
                " a group has hosts, vars and children",
            ],
            id="bad-host-vars-and-unknown-key",
        ),
        pytest.param(
            "all:\n  hosts: [a, b]\n  children: [c]\n",
            [
                "inv.yml:2:10: all.hosts: must be a mapping of host names to their variables,"
                " got a list",
                "inv.yml:3:13: all.children: must be a mapping of group names to groups,"
                " got a list",
            ],
            id="lists-instead-of-mappings",
        ),
        pytest.param(
            "all:\n  hosts:\n    a: {ansible_port: ssh}\n    web[1:x]:\n",
            [
                "inv.yml:3:23: all.hosts.a.ansible_port: ansible_port must be an integer,"
                " got 'ssh'",
                "inv.yml:4:5: all.hosts.web[1:x]: bad host range '[1:x]' in 'web[1:x]':"
                " begin and end must both be numbers or both single letters",
            ],
            id="bad-port-and-range",
        ),
        pytest.param(
            "all:\n  hosts:\n    a:\n    a:\n",
            ["inv.yml:4:5: all.hosts.a: duplicate key 'a' (first at line 3)"],
            id="duplicate-key",
        ),
        pytest.param(
            "a:\n  children:\n    b:\n      children:\n        a:\n",
            ["inv.yml:5:9: a.children.b.children.a: group 'a' contains itself: a -> b -> a"],
            id="cycle",
        ),
        pytest.param(
            "all:\n  hosts:\n    a: {x: [1\n",
            [
                "inv.yml:4:1: invalid YAML: expected ',' or ']', but got '<stream end>'"
                " (while parsing a flow sequence at line 3)"
            ],
            id="syntax-error",
        ),
        pytest.param(
            "all:\n  hosts:\n    a: {when: 2020-13-45}\n",
            ["inv.yml:3:15: all.hosts.a.when: invalid value: month must be in 1..12"],
            id="bad-timestamp",
        ),
        pytest.param(
            "- all\n",
            ["inv.yml:1:1: an Ansible YAML inventory must be a mapping of group names, got a list"],
            id="not-a-mapping",
        ),
        pytest.param(
            "plugin: aws_ec2\n",
            [
                "inv.yml:1:1: plugin: this is an inventory plugin configuration, not an"
                " inventory; rollwave reads only static inventories"
            ],
            id="plugin-config",
        ),
        pytest.param(
            "all:\n  hosts:\n    a:\n      ansible_host: 10.0.0.1\nweb:\n  hosts:\n    a:\n"
            "      ansible_host: 10.0.0.2\n",
            [
                "inv.yml:8:21: web.hosts.a.ansible_host: host 'a' is defined again with"
                " ansible_host '10.0.0.2', but line 4 gave '10.0.0.1'"
            ],
            id="conflicting-address",
        ),
        pytest.param(
            "all:\n  hosts:\n    a: {ansible_host: [1]}\n",
            [
                "inv.yml:3:23: all.hosts.a.ansible_host: ansible_host must be a non-empty"
                " string, got [1]"
            ],
            id="address-not-a-string",
        ),
        pytest.param(
            "all:\n  hosts: a\n  hosts: b\n",
            ["inv.yml:3:3: all.hosts: duplicate key 'hosts' (first at line 2)"],
            id="duplicate-section",
        ),
    ],
)
def test_ansible_yaml_errors(text: str, expected: list[str]) -> None:
    """Each Ansible YAML mistake is one problem with line, column and key path."""
    assert problems(parse_ansible_yaml, text, "inv.yml") == expected


# --------------------------------------------------------------------------- rollwave YAML

ROLLWAVE_YAML = dedent(
    """
    vars: {zone: eu-1, http_port: 8000}
    targets:
      - name: api-1
        address: 10.0.0.11
        port: 2222
        user: deploy
        groups: [api, canary]
        vars: {http_port: 8001}
      - name: api-2
        groups: [api]
      - name: batch
    """
)


def test_rollwave_yaml_targets() -> None:
    """rollwave's format gives address, port, user, groups and vars directly."""
    inventory = parse_rollwave_yaml(ROLLWAVE_YAML, "inv.yml")
    assert list(inventory.targets.values()) == [
        Target("api-1", "10.0.0.11", 2222, "deploy", ("all", "api", "canary")),
        Target("api-2", "api-2", None, None, ("all", "api")),
        Target("batch", "batch", None, None, ("all", "ungrouped")),
    ]
    assert [dict(t.vars) for t in inventory.targets.values()] == [
        {"zone": "eu-1", "http_port": 8001},
        {"zone": "eu-1", "http_port": 8000},
        {"zone": "eu-1", "http_port": 8000},
    ]
    assert inventory.groups == {
        "all": ("api-1", "api-2", "batch"),
        "ungrouped": ("batch",),
        "api": ("api-1", "api-2"),
        "canary": ("api-1",),
    }
    assert inventory.lines == {
        "all": 2,
        "ungrouped": 11,
        "api": 7,
        "canary": 7,
        "api-1": 3,
        "api-2": 9,
        "batch": 11,
    }


def test_rollwave_yaml_ansible_names_are_plain_vars() -> None:
    """In rollwave's format ansible_* variables are ordinary variables, not the address."""
    text = "targets:\n  - {name: a, vars: {ansible_host: 10.0.0.1, ansible_port: x}}\n"
    target = parse_rollwave_yaml(text, "inv.yml").target("a")
    assert (target.address, target.port) == ("a", None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            """
            targets:
              - name: a
                adress: 10.0.0.1
                port: ssh
                groups: web
              - name: a
              - address: x
              - web-3
            varz: {}
            """,
            [
                "inv.yml:3:5: targets[0].adress: unknown key 'adress' (did you mean 'address'?)",
                "inv.yml:4:11: targets[0].port: must be an integer between 1 and 65535, got 'ssh'",
                "inv.yml:5:13: targets[0].groups: must be a list of group names, got 'web'",
                "inv.yml:6:11: targets[1].name: target 'a' is defined twice (first at line 2)",
                "inv.yml:7:5: targets[2]: missing key 'name'",
                "inv.yml:8:5: targets[3]: a target must be a mapping with a name, got 'web-3'",
                "inv.yml:9:1: varz: unknown key 'varz' (did you mean 'vars'?)",
            ],
            id="target-mistakes",
        ),
        pytest.param(
            """
            targets:
              - name: 5
              - name: "a b"
              - {name: c, port: 0, user: [x], groups: ["x:y"], vars: [1]}
            """,
            [
                "inv.yml:2:11: targets[0].name: must be a non-empty string, got 5",
                "inv.yml:3:11: targets[1].name: host name 'a b' contains whitespace",
                "inv.yml:4:21: targets[2].port: must be an integer between 1 and 65535, got 0",
                "inv.yml:4:30: targets[2].user: must be a non-empty string, got a list",
                "inv.yml:4:44: targets[2].groups[0]: group name 'x:y' contains ':', '[' or ']'",
                "inv.yml:4:58: targets[2].vars: must be a mapping of variable names to values,"
                " got a list",
            ],
            id="field-types",
        ),
        pytest.param(
            "targets: {a: 1}\n",
            ["inv.yml:1:10: targets: must be a list of targets, got a mapping"],
            id="targets-not-a-list",
        ),
        pytest.param(
            "vars: {}\n",
            ["inv.yml:1:1: missing key 'targets'"],
            id="no-targets",
        ),
        pytest.param(
            "",
            ["inv.yml:1:1: a rollwave inventory must be a mapping with targets, got null"],
            id="empty",
        ),
    ],
)
def test_rollwave_yaml_errors(text: str, expected: list[str]) -> None:
    """Each rollwave YAML mistake is one problem with line, column and key path."""
    assert problems(parse_rollwave_yaml, text, "inv.yml") == expected


# --------------------------------------------------------------------------- load_inventory


@pytest.mark.parametrize(
    ("filename", "content", "address"),
    [
        pytest.param("hosts.ini", "a ansible_host=10.0.0.1\n", "10.0.0.1", id="ini"),
        pytest.param("hosts.cfg", "a ansible_host=10.0.0.1\n", "10.0.0.1", id="cfg"),
        pytest.param("hosts", "a ansible_host=10.0.0.1\n", "10.0.0.1", id="no-extension"),
        pytest.param("hosts.txt", "a ansible_host=10.0.0.1\n", "10.0.0.1", id="other-extension"),
        pytest.param(
            "hosts.yml", "all:\n  hosts:\n    a: {ansible_host: 10.0.0.1}\n", "10.0.0.1", id="yml"
        ),
        pytest.param(
            "hosts.YAML", "all:\n  hosts:\n    a: {ansible_host: 10.0.0.1}\n", "10.0.0.1", id="YAML"
        ),
        pytest.param(
            "hosts.yaml", "targets:\n  - {name: a, address: 10.0.0.1}\n", "10.0.0.1", id="rollwave"
        ),
        pytest.param(
            "hosts.json",
            '{"targets": [{"name": "a", "address": "10.0.0.1"}]}',
            "10.0.0.1",
            id="json",
        ),
        pytest.param(
            "hosts.yml", "\ufefftargets:\n  - {name: a, address: 10.0.0.1}\n", "10.0.0.1", id="bom"
        ),
    ],
)
def test_load_inventory_detects_the_format(
    tmp_path: Path, filename: str, content: str, address: str
) -> None:
    """The extension picks INI or YAML, and a top-level targets key picks rollwave's format."""
    path = tmp_path / filename
    path.write_text(content, encoding="utf-8")
    inventory = load_inventory(path)
    assert inventory.source == str(path)
    assert inventory.target("a").address == address


@pytest.mark.parametrize(
    ("filename", "content", "expected"),
    [
        pytest.param(
            "hosts.ini",
            b"a\n\xff\n",
            ["shown:2:1: the inventory is not UTF-8 text: byte 0xff cannot be decoded"],
            id="not-utf8",
        ),
        pytest.param(
            "hosts.yml",
            b"all:\n  hosts:\n    a: {x: \x07}\n",
            ["shown:3:12: invalid YAML: unacceptable character #x0007"],
            id="control-character",
        ),
        pytest.param(
            "hosts.yml",
            b"targets:\n  - {name: a, bogus: 1}\n",
            ["shown:2:15: targets[0].bogus: unknown key 'bogus'"],
            id="display-name",
        ),
    ],
)
def test_load_inventory_errors_use_the_display_name(
    tmp_path: Path, filename: str, content: bytes, expected: list[str]
) -> None:
    """Errors print the display name given, with the line of the bad byte or key."""
    path = tmp_path / filename
    path.write_bytes(content)
    with pytest.raises(InventoryError) as caught:
        load_inventory(path, display_name="shown")
    assert [str(problem) for problem in caught.value.problems] == expected


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda tmp: tmp / "missing.ini", id="missing"),
        pytest.param(lambda tmp: tmp, id="directory"),
    ],
)
def test_load_inventory_unreadable_file(tmp_path: Path, make: Callable[[Path], Path]) -> None:
    """An unreadable inventory is one problem naming the file, with no line."""
    with pytest.raises(InventoryError) as caught:
        load_inventory(make(tmp_path), display_name="inventory.ini")
    (problem,) = caught.value.problems
    assert (problem.file, problem.line) == ("inventory.ini", 0)
    assert str(problem).startswith("inventory.ini: cannot read the inventory: ")


# --------------------------------------------------------------------------- patterns

PATTERN_INI = dedent(
    """
    lb1
    [web]
    web-1 zone=a
    web-2 zone=b
    web-3 zone=a
    web-10
    [db]
    db-1
    db-2
    [eu]
    web-1
    db-2
    [canary]
    web-2
    [backend:children]
    web
    db
    """
)
ALL = ["lb1", "web-1", "web-2", "web-3", "web-10", "db-1", "db-2"]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        pytest.param("web", ["web-1", "web-2", "web-3", "web-10"], id="group"),
        pytest.param("db-2", ["db-2"], id="host"),
        pytest.param("all", ALL, id="all"),
        pytest.param("*", ALL, id="star"),
        pytest.param("web-?", ["web-1", "web-2", "web-3"], id="glob-question"),
        pytest.param("web*", ["web-1", "web-2", "web-3", "web-10"], id="glob-star"),
        pytest.param("*-1*", ["web-1", "web-10", "db-1"], id="glob-middle"),
        pytest.param("web-[12]", ["web-1", "web-2"], id="glob-class"),
        pytest.param("ba*", ["web-1", "web-2", "web-3", "web-10", "db-1", "db-2"], id="glob-group"),
        pytest.param("db:lb1", ["lb1", "db-1", "db-2"], id="union-in-inventory-order"),
        pytest.param("db,lb1", ["lb1", "db-1", "db-2"], id="union-comma"),
        pytest.param("db, lb1", ["lb1", "db-1", "db-2"], id="union-comma-space"),
        pytest.param("backend:&eu", ["web-1", "db-2"], id="intersection"),
        pytest.param("web:!canary", ["web-1", "web-3", "web-10"], id="exclusion"),
        pytest.param("web:!web-1:!web-10", ["web-2", "web-3"], id="two-exclusions"),
        pytest.param("!canary:web", ["web-1", "web-3", "web-10"], id="exclusion-applies-last"),
        pytest.param("&eu:web:db", ["web-1", "db-2"], id="intersection-after-unions"),
        pytest.param("!web", ["lb1", "db-1", "db-2"], id="only-exclusion-starts-from-all"),
        pytest.param("&eu", ["web-1", "db-2"], id="only-intersection-starts-from-all"),
        pytest.param("web:&eu:!db", ["web-1"], id="all-three"),
        pytest.param("ungrouped", ["lb1"], id="ungrouped"),
        pytest.param("api", [], id="unknown-name"),
        pytest.param("Web", [], id="case-sensitive"),
        pytest.param("", [], id="empty"),
        pytest.param("web:&nothing", [], id="intersection-with-unknown"),
    ],
)
def test_select(pattern: str, expected: list[str]) -> None:
    """Host patterns select like Ansible's, and always in inventory order."""
    assert names(select(parse_ini(PATTERN_INI, "inv"), pattern)) == expected


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        pytest.param("web", None, id="selects"),
        pytest.param(
            "api", "host pattern 'api' selects no target: no group or host 'api'", id="unknown"
        ),
        pytest.param(
            "webs:db",
            None,
            id="partly-unknown-but-selects",
        ),
        pytest.param(
            "wbe",
            "host pattern 'wbe' selects no target: no group or host 'wbe' (did you mean 'web'?)",
            id="did-you-mean",
        ),
        pytest.param(
            "api*",
            "host pattern 'api*' selects no target: no group or host matches 'api*'",
            id="glob",
        ),
        pytest.param("web:&db", "host pattern 'web:&db' selects no target", id="disjoint"),
        pytest.param(
            "~web.*",
            "host pattern '~web.*' selects no target:"
            " regular expressions ('~web.*') are not supported",
            id="regex",
        ),
        pytest.param("  ", "host pattern '  ' selects no target: the pattern is empty", id="empty"),
    ],
)
def test_pattern_problems(pattern: str, expected: str | None) -> None:
    """pattern_problems explains an empty selection and is None otherwise."""
    assert pattern_problems(parse_ini(PATTERN_INI, "inv"), pattern) == expected


@pytest.mark.parametrize(
    ("parse", "text"),
    [
        pytest.param(parse_ini, FLEET_INI, id="ini"),
        pytest.param(parse_ini, PATTERN_INI, id="ini-patterns"),
        pytest.param(parse_ansible_yaml, FLEET_YAML, id="ansible-yaml"),
        pytest.param(parse_rollwave_yaml, ROLLWAVE_YAML, id="rollwave-yaml"),
    ],
)
def test_group_views_agree(parse: Parser, text: str) -> None:
    """A target lists a group exactly when that group lists the target, and select agrees."""
    inventory = parse(text, "inv")
    for name, target in inventory.targets.items():
        assert target.groups == tuple(sorted(g for g, hs in inventory.groups.items() if name in hs))
    for group, hosts in inventory.groups.items():
        assert tuple(names(select(inventory, group))) == hosts
        assert len(set(hosts)) == len(hosts)


# --------------------------------------------------------------------------- never crash

PARSERS = [parse_ini, parse_ansible_yaml, parse_rollwave_yaml]
INI_ALPHABET = st.sampled_from(
    [*"[]:=#;'\" \n\\,\x00é-ab019", "children", "vars", "all", "ansible_port", "ansible_host"]
)
YAML_WORDS = "all hosts vars children targets name port groups ansible_port null 2020-13-45"
YAML_ALPHABET = st.sampled_from(
    [*":{}[],'?\n\t\x00 -a1", "  ", "- ", "&a ", "*a", "<<", "!!int ", *YAML_WORDS.split()]
)


def outcome(call: Callable[[], Inventory]) -> None:
    """Run a parse, accepting success or an InventoryError with problems, nothing else."""
    try:
        inventory = call()
    except InventoryError as exc:
        assert exc.problems
        assert all(problem.file for problem in exc.problems)
        assert not any("a rollwave bug" in problem.message for problem in exc.problems)
    else:
        assert "all" in inventory.groups


@settings(max_examples=150, deadline=None)
@given(
    text=st.one_of(
        st.text(),
        st.lists(INI_ALPHABET, max_size=60).map("".join),
        st.lists(YAML_ALPHABET, max_size=60).map("".join),
    )
)
def test_parsers_never_raise_anything_else_on_text(text: str) -> None:
    """Any text makes each parser return an inventory or raise InventoryError."""
    for parse in PARSERS:
        outcome(partial(parse, text, "fuzz"))


@settings(max_examples=150, deadline=None)
@given(data=st.binary())
def test_parsers_never_raise_anything_else_on_bytes(data: bytes) -> None:
    """Any bytes make each parser return an inventory or raise InventoryError."""
    for parse in PARSERS:
        outcome(partial(parse, data, "fuzz"))


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory for every fuzzed file (hypothesis reruns the test, not the fixture)."""
    return tmp_path_factory.mktemp("fuzz")


@settings(max_examples=100, deadline=None)
@given(
    data=st.one_of(st.binary(), st.text().map(str.encode)),
    suffix=st.sampled_from([".ini", "", ".yml", ".yaml", ".json"]),
)
def test_load_inventory_never_raises_anything_else(
    fuzz_dir: Path, data: bytes, suffix: str
) -> None:
    """Any file content makes load_inventory return an inventory or raise InventoryError."""
    path = fuzz_dir / f"inventory{suffix}"
    path.write_bytes(data)
    outcome(lambda: load_inventory(path))
