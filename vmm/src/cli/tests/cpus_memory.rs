//! `--cpus`, `--memory` and `--memory-zone`, accepted and rejected.

use super::*;

#[test]
fn cpus_accepted() {
    let cpus = vm(&["--cpus", "boot=2"]).cpus;
    assert_eq!((cpus.boot_vcpus, cpus.max_vcpus), (2, 2));
    let cpus = vm(&["--cpus", "boot=2,max=8"]).cpus;
    assert_eq!((cpus.boot_vcpus, cpus.max_vcpus), (2, 8));
    let cpus = vm(&["--cpus", "max=4"]).cpus;
    assert_eq!((cpus.boot_vcpus, cpus.max_vcpus), (1, 4));
    let cpus = vm(&["--cpus", "boot=254"]).cpus;
    assert_eq!((cpus.boot_vcpus, cpus.max_vcpus), (254, 254));
}

#[test]
fn cpus_features() {
    let keep = |value: &str| vm(&["--cpus", value]).cpus.features.keep;
    assert_eq!(keep("features=[xsave,cx16]"), vec!["xsave", "cx16"]);
    assert_eq!(
        keep("boot=2,features=[XSAVE,popcnt,xsave],max=2"),
        vec!["xsave", "popcnt"]
    );
    assert_eq!(keep("features=all"), vec!["all"]);
    assert!(keep("features=[]").is_empty());
    assert_eq!(
        error(&["--cpus", "features=[xsave,,cx16]"]),
        "--cpus: features=[xsave,,cx16]: empty list element"
    );
    assert_eq!(
        error(&["--cpus", "features=[a-b]"]),
        "--cpus: features=[a-b]: invalid feature name 'a-b'"
    );
    assert_eq!(
        error(&["--cpus", "features=[xsave"]),
        "--cpus: unbalanced brackets in 'features=[xsave'"
    );
}

#[test]
fn cpus_cloud_hypervisor_keys() {
    let cpus = vm(&[
        "--cpus",
        "boot=2,max=4,topology=2:2:1:1,kvm_hyperv=off,max_phys_bits=40,nested=off,\
         affinity=[0@[0],1@[0-1]],core_scheduling=vcpu",
    ])
    .cpus;
    let t = cpus.topology.unwrap();
    assert_eq!(
        (
            t.threads_per_core,
            t.cores_per_die,
            t.dies_per_package,
            t.packages
        ),
        (2, 2, 1, 1)
    );
    assert_eq!(
        (cpus.max_phys_bits, cpus.nested, cpus.kvm_hyperv),
        (40, false, false)
    );
    let affinity = cpus.affinity.unwrap();
    assert_eq!(affinity[1].host_cpus, [0, 1]);
    assert_eq!(cpus.core_scheduling, CoreScheduling::Vcpu);
    for (value, message) in [
        (
            "topology=1:2:1",
            "topology=1:2:1: expected threads_per_core:cores_per_die:dies_per_package:packages",
        ),
        (
            "topology=0:1:1:1",
            "topology=0:1:1:1: each count must be between 1 and 255",
        ),
        (
            "affinity=[x@[1]]",
            "affinity=[x@[1]]: 'x' is not a vCPU number",
        ),
        (
            "affinity=[0@[3-1]]",
            "affinity=[0@[3-1]]: range 3-1 is backwards",
        ),
        (
            "core_scheduling=all",
            "core_scheduling=all: expected vm, vcpu or off",
        ),
        (
            "kvm_hyperv=on",
            "cpus.kvm_hyperv=true: not supported by chv (chv has no Hyper-V enlightenments)",
        ),
        (
            "boot=6,topology=3:2:1:1",
            "cpus.topology: not supported by chv (threads_per_core=3 must be a power of two \
             when a higher level has more than one member (vCPU ids are contiguous))",
        ),
    ] {
        let text = error(&["--cpus", value]);
        assert!(text.ends_with(message), "{value}: {text}");
    }
}

#[test]
fn cpus_rejected() {
    assert_eq!(
        error(&["--cpus", "boot=0"]),
        "--cpus: boot=0: must be between 1 and 254"
    );
    assert_eq!(
        error(&["--cpus", "boot=255"]),
        "--cpus: boot=255: must be between 1 and 254"
    );
    assert_eq!(
        error(&["--cpus", "boot=2,max=1"]),
        "--cpus: max=1: must be between boot (2) and 254"
    );
    assert_eq!(
        error(&["--cpus", "boot=2,foo=1"]),
        "--cpus: unknown option 'foo' (expected boot, max, topology, kvm_hyperv, max_phys_bits, \
         affinity, nested, core_scheduling or features)"
    );
    assert_eq!(
        error(&["--cpus", "boot=two"]),
        "--cpus: boot=two: not a non-negative decimal number"
    );
    assert_eq!(
        error(&["--cpus", "boot"]),
        "--cpus: 'boot' needs a value (boot=...)"
    );
    assert_eq!(
        error(&["--cpus", "boot=1,boot=2"]),
        "--cpus: 'boot' given more than once"
    );
    assert_eq!(error(&["--cpus", ""]), "--cpus: empty value");
    assert_eq!(
        error(&["--cpus", "boot=2,topology=1:1:1:1"]),
        "--cpus: cpus.topology: threads_per_core=1 x cores_per_die=1 x dies_per_package=1 x \
         packages=1 must be max_vcpus=2 (and none zero)"
    );
}

#[test]
fn memory_accepted() {
    let size = |value: &str| vm(&["--memory", value]).memory.size;
    assert_eq!(size("size=128M"), 128 << 20);
    assert_eq!(size("size=1G"), 1 << 30);
    assert_eq!(size("size=512K"), 512 << 10);
    assert_eq!(size("size=4096"), 4096);
    assert_eq!(size("size=1T"), 1 << 40);
    assert_eq!(size("size=256M,shared=off,hugepages=off"), 256 << 20);
    assert_eq!(size("shared=off"), MemoryConfig::default().size);
    let memory = vm(&[
        "--memory",
        "size=1G,shared=on,hugepages=on,hugepage_size=2M,prefault=on,thp=off",
    ])
    .memory;
    if arch::PLATFORM.acpi_hotplug.is_some() {
        let hotplug = vm(&["--memory", "size=1G,hotplug_size=2G"]).memory;
        assert_eq!(hotplug.hotplug_room(), 2 << 30);
    } else {
        // No ACPI memory hotplug here (aarch64): refused by name.
        let refused = error(&["--memory", "size=1G,hotplug_size=2G"]);
        assert!(refused.contains("memory.hotplug_method=acpi"), "{refused}");
    }
    assert!(vm(&["--memory", "size=1G,mergeable=on"]).memory.mergeable);
    let refused = error(&["--memory", "size=1G,shared=on,mergeable=on"]);
    assert!(refused.contains("memory.mergeable"), "{refused}");
    assert_eq!(
        memory,
        MemoryConfig {
            size: 1 << 30,
            shared: true,
            hugepages: true,
            hugepage_size: Some(2 << 20),
            prefault: true,
            thp: false,
            ..MemoryConfig::default()
        }
    );
}

#[test]
fn memory_zones_accepted() {
    let memory = vm(&[
        "--memory",
        "size=0",
        "--memory-zone",
        "id=mem0,size=256M,shared=on",
        "id=mem1,size=128M,file=/dev/shm,prefault=on,mergeable=on",
    ])
    .memory;
    assert_eq!(memory.size, 0);
    assert_eq!(memory.boot_size(), 384 << 20);
    let zones = memory.zones.unwrap();
    assert_eq!(zones.len(), 2);
    assert_eq!((zones[0].id.as_str(), zones[0].size), ("mem0", 256 << 20));
    assert!(zones[0].shared && zones[0].file.is_none());
    assert_eq!(
        zones[1].file.as_deref(),
        Some(std::path::Path::new("/dev/shm"))
    );
    assert!(zones[1].prefault && zones[1].mergeable && !zones[1].shared);
}

#[test]
fn memory_rejected() {
    assert_eq!(
        error(&["--memory", "size=12Q"]),
        "--memory: size=12Q: invalid size suffix 'Q' (expected K, M, G or T)"
    );
    assert_eq!(
        error(&["--memory", "size=0"]),
        "--memory: memory.size=0: must not be zero"
    );
    assert_eq!(error(&["--memory", "size="]), "--memory: size=: empty size");
    assert_eq!(
        error(&["--memory", "size=4097"]),
        "--memory: size=4097: must be a multiple of 4 KiB"
    );
    assert_eq!(
        error(&["--memory", "size=2T"]),
        "--memory: size=2T: must not exceed 1 TiB"
    );
    assert_eq!(
        error(&["--memory", "size=99999999T"]),
        "--memory: size=99999999T: size does not fit in 64 bits"
    );
    assert_eq!(
        error(&["--memory", "hugepages=maybe"]),
        "--memory: hugepages=maybe: expected on or off"
    );
    assert_eq!(
        error(&["--memory", "128M"]),
        "--memory: unknown option '128M' (expected size, shared, hugepages, hugepage_size, \
         prefault, thp, mergeable, hotplug_method, hotplug_size or hotplugged_size)"
    );
    if arch::PLATFORM.acpi_hotplug.is_some() {
        assert_eq!(
            error(&["--memory", "size=1G,hotplug_size=100M"]),
            "--memory: memory.hotplug_size=104857600: must be a multiple of 128 MiB"
        );
    }
    // virtio-mem and ACPI hotplug need the platform's hotplug window
    // (aarch64 refuses both by name).
    if arch::PLATFORM.acpi_hotplug.is_some() {
        assert_eq!(
            error(&[
                "--memory",
                "size=1G,hotplug_size=1G,hotplug_method=virtio-mem,hotplugged_size=3M"
            ]),
            "--memory: memory.hotplugged_size=3145728: must be a multiple of the 2 MiB virtio-mem \
             block size, at most memory.hotplug_size"
        );
        assert_eq!(
            error(&[
                "--memory",
                "size=1G,hotplug_size=128M,hotplug_method=virtio-mem,hotplugged_size=256M"
            ]),
            "--memory: memory.hotplugged_size=268435456: must be a multiple of the 2 MiB virtio-mem \
             block size, at most memory.hotplug_size"
        );
        assert_eq!(
            error(&[
                "--memory",
                "size=1G,hotplug_method=virtio-mem,hotplugged_size=2M"
            ]),
            "--memory: memory.hotplugged_size=2097152: needs memory.hotplug_size"
        );
        assert!(
            error(&["--memory", "size=1G,hotplug_size=1G,hotplugged_size=2M"])
                .starts_with("--memory: memory.hotplugged_size: not supported by chv")
        );
    }
    assert_eq!(
        error(&["--memory", "hotplug_method=dimm"]),
        "--memory: hotplug_method=dimm: expected acpi or virtio-mem"
    );
    assert_eq!(
        error(&["--memory", "size=1G,hugepage_size=3M,hugepages=on"]),
        "--memory: memory.hugepage_size=3145728: must be a power of two of at least 4 KiB"
    );
    assert_eq!(
        error(&["--memory", "size=1G,hugepage_size=2M"]),
        "--memory: memory.hugepage_size=2097152: needs hugepages=on"
    );
    assert_eq!(
        error(&["--memory", "size=1G", "--memory-zone", "id=a,size=1G"]),
        "--memory: memory.size=1073741824: must be 0 when memory.zones define the RAM"
    );
    assert_eq!(
        error(&["--memory", "size=0", "--memory-zone", "size=1G"]),
        "--memory-zone: missing id=ID"
    );
    assert_eq!(
        error(&["--memory", "size=0", "--memory-zone", "id=a,size=0"]),
        "--memory-zone: size=0: must not be zero"
    );
    assert_eq!(
        error(&[
            "--memory",
            "size=0",
            "--memory-zone",
            "id=a,size=1G",
            "id=a,size=1G"
        ]),
        "--memory-zone: memory.zones[a].id: is used by another zone"
    );
    assert_eq!(
        error(&["--memory", "size=0", "--memory-zone", "id=a,size=1G,host_numa_node=0"]),
        "--memory-zone: memory.zones[a].host_numa_node: not supported by chv (not implemented by chv yet)"
    );
}
