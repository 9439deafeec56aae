"""schemathesis hooks for chv's schema run (tests/tests/api/schemathesis.rs,
`openapi_schema_fuzzing`).

The run sends the cases schemathesis generates from
api-server/openapi/chv.yaml to a real chv. chv.yaml lists every property
of Cloud Hypervisor's schema with the values chv accepts, so a positive
case (one the spec says is valid) must be accepted. Before each case these
hooks put chv into the state the operation needs (no VM for vm.create and
vm.restore, a created VM for cold plugs, a running or paused one for
pause/resume/snapshot/resize, ...) and point the host resources a body
names (kernel, disk images, sockets, snapshot URLs) at files the test
prepared, and state the few cross-field rules OpenAPI 3.0 cannot express
(see `fix_vm_config`). Generated values are otherwise sent as they are.

`chv_accepts_positive_cases` judges each positive case:
- a 2xx passes;
- a 4xx passes only when its JSON error chain says
  `<field>: not supported by chv (...)` for a field listed in
  docs/compatibility.md's table of refused properties (the field with
  array indices written `[]` and without its `=value`);
- anything else fails the run.
Negative cases only have to avoid server errors (`not_a_server_error`).

Environment: CHV_ST_SOCK (chv's API socket), CHV_ST_DIR (scratch dir with
the prepared files), CHV_ST_KERNEL (the test guest), CHV_ST_COMPAT
(docs/compatibility.md), CHV_ST_LOG (where accepted refusals are logged).
"""

import json
import os
import re
import socket

import schemathesis

SOCK = os.environ.get("CHV_ST_SOCK", "")
DIR = os.environ.get("CHV_ST_DIR", "/tmp")
KERNEL = os.environ.get("CHV_ST_KERNEL", "")
COMPAT = os.environ.get("CHV_ST_COMPAT", "")
LOG = os.environ.get("CHV_ST_LOG", os.path.join(DIR, "refusals.txt"))

MIB = 1 << 20
# The VM the hooks create when an operation needs one: the test guest's
# ticker, two vCPUs possible, two PCI segments (devices may ask for
# segment 1). vm.remove-device gets it with a disk to remove (never
# booted: see `fresh_with_disk`).
GOOD_VM = {
    "cpus": {"boot_vcpus": 1, "max_vcpus": 2},
    "memory": {"size": 64 * MIB, "shared": True},
    "payload": {"kernel": KERNEL, "cmdline": "test=ticker"},
    "serial": {"mode": "Null"},
    "console": {"mode": "Off"},
    "platform": {"num_pci_segments": 2},
}
GOOD_MAX_VCPUS = 2
BASE_SNAPSHOT = os.path.join(DIR, "base-snapshot")


def refused_fields():
    """(where, property) of each row of docs/compatibility.md's table of
    refused properties."""
    fields = set()
    try:
        text = open(COMPAT, encoding="utf-8").read()
    except OSError:
        return fields
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[1].startswith("`"):
            fields.add((cells[0], cells[1].strip("`")))
    return fields


REFUSED = refused_fields()


def api(method, endpoint, body=None):
    """One request over chv's Unix socket; returns (status, body text)."""
    payload = b"" if body is None else json.dumps(body).encode()
    head = f"{method} /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(60)
    try:
        s.connect(SOCK)
        s.sendall(head.encode() + b"\r\n" + payload)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        head_bytes, _, rest = buf.partition(b"\r\n\r\n")
        lines = head_bytes.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        while len(rest) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
        return status, rest.decode("utf-8", "replace")
    finally:
        s.close()


def must(status_body, what):
    status, body = status_body
    if not 200 <= status < 300:
        raise RuntimeError(f"setup step {what} failed: {status} {body}")


def vm_state():
    status, body = api("GET", "vm.info")
    if status != 200:
        return None
    return json.loads(body).get("state")


def no_vm():
    if vm_state() is not None:
        must(api("PUT", "vm.delete"), "vm.delete")


def created():
    if vm_state() != "Created":
        no_vm()
        must(api("PUT", "vm.create", GOOD_VM), "vm.create")


def fresh():
    """A new created VM: cold plugs must not clash with earlier ones."""
    no_vm()
    must(api("PUT", "vm.create", GOOD_VM), "vm.create")


def fresh_with_disk():
    """A new created VM with disk `gooddisk`. It is not booted: a VM
    deleted after boot keeps its disk image locked (a leak found by this
    run, see STATUS-clients), so no booted VM gets a disk here."""
    no_vm()
    vm = dict(GOOD_VM, disks=[{"path": os.path.join(DIR, "disk.img"), "id": "gooddisk"}])
    must(api("PUT", "vm.create", vm), "vm.create")


def running():
    state = vm_state()
    if state == "Running":
        return
    if state == "Paused":
        must(api("PUT", "vm.resume"), "vm.resume")
        return
    fresh()
    must(api("PUT", "vm.boot"), "vm.boot")


def paused():
    running()
    must(api("PUT", "vm.pause"), "vm.pause")


def base_snapshot():
    """A snapshot of the good VM for vm.restore, taken once."""
    if os.path.exists(os.path.join(BASE_SNAPSHOT, "state.json")):
        return
    os.makedirs(BASE_SNAPSHOT, exist_ok=True)
    paused()
    must(
        api("PUT", "vm.snapshot", {"destination_url": f"file://{BASE_SNAPSHOT}"}),
        "vm.snapshot",
    )


def restore_ready():
    base_snapshot()
    no_vm()


PRECONDITION = {
    "/vm.create": no_vm,
    "/vm.restore": restore_ready,
    "/vm.delete": created,
    "/vm.boot": fresh,
    "/vm.info": created,
    "/vm.counters": running,
    "/vm.pause": running,
    "/vm.resume": paused,
    "/vm.reboot": running,
    "/vm.shutdown": running,
    "/vm.power-button": running,
    "/vm.snapshot": paused,
    "/vm.resize": running,
    "/vm.remove-device": fresh_with_disk,
}
COLD_PLUG = (
    "/vm.add-disk",
    "/vm.add-net",
    "/vm.add-vsock",
    "/vm.add-fs",
    "/vm.add-pmem",
    "/vm.add-device",
    "/vm.add-user-device",
    "/vm.add-vdpa",
    "/vm.add-generic-vhost-user",
    "/vm.resize-zone",
    "/vm.resize-disk",
    "/vm.coredump",
)

COUNTER = [0]


def unique(name):
    COUNTER[0] += 1
    return os.path.join(DIR, f"{name}-{COUNTER[0]}")


def fix_disk(d):
    if isinstance(d, dict) and "path" in d:
        d["path"] = os.path.join(DIR, "disk.img")


def fix_pmem(p):
    if isinstance(p, dict) and "file" in p:
        p["file"] = os.path.join(DIR, "pmem.img")


def fix_socket(dev, name):
    if isinstance(dev, dict) and "socket" in dev:
        dev["socket"] = unique(name) + ".sock"


def fix_console(c, name):
    if not isinstance(c, dict):
        return
    if "file" in c:
        c["file"] = unique(name) + ".out"
    if "socket" in c:
        c["socket"] = unique(name) + ".sock"


def segments_used(cfg):
    used = [0]
    for key in ("disks", "net", "fs", "pmem"):
        for dev in cfg.get(key) or []:
            if isinstance(dev, dict):
                seg = dev.get("pci_segment", 0)
                used.append(seg if isinstance(seg, int) else 0)
    for seg in cfg.get("pci_segments") or []:
        if isinstance(seg, dict) and isinstance(seg.get("pci_segment"), int):
            used.append(seg["pci_segment"])
    for key in ("vsock", "rng", "console"):
        dev = cfg.get(key)
        if isinstance(dev, dict):
            seg = dev.get("pci_segment", 0)
            used.append(seg if isinstance(seg, int) else 0)
    return max(used)


def fix_topology(cpus):
    """Drops a cpus.topology whose product is not max_vcpus."""
    if not isinstance(cpus, dict) or not isinstance(cpus.get("topology"), dict):
        return
    t = cpus["topology"]
    product = 1
    for key in ("threads_per_core", "cores_per_die", "dies_per_package", "packages"):
        v = t.get(key)
        product *= v if isinstance(v, int) else 0
    if product != cpus.get("max_vcpus", cpus.get("boot_vcpus", 1)):
        del cpus["topology"]


def fix_vm_config(cfg):
    """Host resources, and the cross-field rules OpenAPI 3.0 cannot state:
    a virtio-fs share needs memory.shared=true (its backend maps guest
    RAM), a device on PCI segment N needs platform.num_pci_segments
    above N, and a cpus.topology multiplies out to max_vcpus (the schema's
    `anyOf` branches let a generator pair one branch's topology with
    another's max_vcpus; such a topology is dropped)."""
    payload = cfg.setdefault("payload", {})
    payload["kernel"] = KERNEL
    fix_topology(cfg.get("cpus"))
    if "initramfs" in payload:
        payload["initramfs"] = os.path.join(DIR, "initrd")
    if isinstance(cfg.get("rng"), dict):
        cfg["rng"]["src"] = "/dev/urandom"
    for d in cfg.get("disks") or []:
        fix_disk(d)
    for p in cfg.get("pmem") or []:
        fix_pmem(p)
    for f in cfg.get("fs") or []:
        fix_socket(f, "fs")
    fix_socket(cfg.get("vsock"), "vsock")
    fix_console(cfg.get("serial"), "serial")
    fix_console(cfg.get("console"), "console")
    if cfg.get("fs"):
        cfg.setdefault("memory", {"size": 64 * MIB})["shared"] = True
    need = segments_used(cfg) + 1
    if need > 1:
        platform = cfg.get("platform")
        if not isinstance(platform, dict):
            platform = cfg["platform"] = {}
        if platform.get("num_pci_segments", 1) < need:
            platform["num_pci_segments"] = need


@schemathesis.hook
def before_call(context, case, **kwargs):
    path = case.operation.path
    body = case.body if isinstance(case.body, dict) else None
    if path in COLD_PLUG:
        fresh()
    elif path in PRECONDITION:
        PRECONDITION[path]()
    # Negative cases are sent as generated: they only have to be refused
    # without a server error.
    meta = case.meta
    if body is None or meta is None or not meta.generation.mode.is_positive:
        return
    if path == "/vm.create":
        fix_vm_config(body)
    elif path == "/vm.add-disk":
        fix_disk(body)
    elif path == "/vm.add-pmem":
        fix_pmem(body)
    elif path in ("/vm.add-fs", "/vm.add-vsock"):
        fix_socket(body, path[len("/vm.add-"):])
    elif path == "/vm.snapshot" and "destination_url" in body:
        target = unique("snapshot")
        os.makedirs(target, exist_ok=True)
        body["destination_url"] = f"file://{target}"
    elif path == "/vm.restore":
        if "source_url" in body:
            body["source_url"] = f"file://{BASE_SNAPSHOT}"
        # The base snapshot has no network device to give fds to.
        body.pop("net_fds", None)
        # Host-side overrides must fit the snapshot's devices (its console
        # is off, it has no vsock): left to the restore tests.
        for key in ("serial", "console", "vsock"):
            body.pop(key, None)
        # OnDemand maps guest RAM lazily, prefault reads it all in: the two
        # are refused together (choose one).
        if body.get("memory_restore_mode") == "OnDemand":
            body.pop("prefault", None)
    elif path == "/vm.remove-device" and "id" in body:
        body["id"] = "gooddisk"
    elif path == "/vm.resize":
        # desired_vcpus may not exceed the VM's max_vcpus.
        v = body.get("desired_vcpus")
        if isinstance(v, int) and v > GOOD_MAX_VCPUS:
            body["desired_vcpus"] = 1 + (v - 1) % GOOD_MAX_VCPUS
        # The hook VM has no memory.hotplug_size or balloon: RAM and balloon
        # resizes are covered by tests/tests/memory_linux.rs.
        body.pop("desired_ram", None)
        body.pop("desired_balloon", None)


REFUSAL = re.compile(r"([A-Za-z0-9_.\[\]/-]+?)(=.*?)?: not supported by chv")


def refused_field(path, chain):
    """The documented field a refusal of operation `path` names, if any.
    VmConfig's rows (where = vm.create) also hold for the vm.add-*
    endpoints, whose bodies are VmConfig's device configs."""
    endpoint = path.lstrip("/")
    where = "vm.create" if endpoint.startswith("vm.add-") else endpoint
    for message in chain:
        m = REFUSAL.search(str(message))
        if not m:
            continue
        field = re.sub(r"\[\d+\]", "[]", m.group(1))
        if (where, field) in REFUSED:
            return field
    return None


@schemathesis.check
def chv_accepts_positive_cases(ctx, response, case):
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    status = response.status_code
    if 200 <= status < 300:
        return True
    # 429: a vCPU removal the (test) guest has not finished yet; CH's
    # clients retry it. Valid, and not a refusal.
    if status == 429 and case.operation.path == "/vm.resize":
        return True
    if 400 <= status < 500:
        try:
            chain = json.loads(response.text)
        except ValueError:
            chain = []
        if isinstance(chain, list):
            field = refused_field(case.operation.path, chain)
            if field is not None:
                with open(LOG, "a", encoding="utf-8") as log:
                    log.write(f"{case.operation.path} {field}\n")
                return True
    raise AssertionError(
        f"a valid {case.operation.path} request was refused: {status} {response.text}"
    )
