//! One guest: its KVM VM, memory, devices and vCPU threads, from creation to
//! the moment the guest powers off or resets.

use std::fs::File;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::legacy::{ConsoleInput, GuestStopEvent};
use devices::Bus;
use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use std::path::Path;

use crate::config::{ConsoleOutputMode, VmConfig};
use crate::console_host::HostConsole;
use crate::control_loop::ThreadFilters;
use crate::device_manager::DeviceManager;
use crate::memory::hotplug::{MemoryHotplug, MemoryResizeError};
use crate::platform_devices::{PlatformContext, PlatformDevices};
use crate::snapshot::{self, MemoryRestoreMode, SnapshotError, VmSnapshot};
use crate::vcpu::hotplug::{ResizeError, VcpuHotplug, VcpuSetup};
use crate::vcpu::{self, PauseGate, VcpuContext, VcpuEvent, VcpuHandle};
use crate::VmmError;

/// How a VM run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered off.
    PowerOff,
    /// The guest asked for a reset; the caller builds a fresh VM.
    Reset,
    /// The host asked chv to stop (SIGINT/SIGTERM).
    Stopped,
}

/// Smallest guest RAM chv accepts.
pub const MIN_MEMORY: u64 = 16 << 20;

/// Where a VM's initial state comes from.
pub enum VmSource<'a> {
    /// Load the payload (kernel, initramfs, command line) and start it.
    Boot,
    /// Rebuild the VM a snapshot describes; vCPUs start paused.
    Restore {
        /// The parsed state file.
        snapshot: &'a VmSnapshot,
        /// Where guest RAM comes from.
        memory: RestoreMemory<'a>,
    },
}

/// Guest RAM of a VM being restored.
pub enum RestoreMemory<'a> {
    /// The snapshot directory's memory file.
    File {
        /// The snapshot directory.
        dir: &'a Path,
        /// Lazy or eager loading.
        mode: MemoryRestoreMode,
    },
    /// Already filled in (received by a live migration).
    Filled(GuestMemoryMmap),
}

/// A booted VM: KVM handles, guest memory, the buses and the vCPU threads.
pub struct Vm {
    kvm: Kvm,
    /// Virtio devices on the PCI bus (dropped before the VM fd).
    pub devices: DeviceManager,
    vm_fd: Arc<VmFd>,
    memory: GuestMemoryMmap,
    machine: arch::Machine,
    legacy: PlatformDevices,
    vcpus: Vec<VcpuHandle>,
    /// vCPU hotplug, when `max_vcpus > boot_vcpus`.
    cpu_hotplug: Option<VcpuHotplug>,
    /// ACPI memory hotplug, when `memory.hotplug_size` is set.
    memory_hotplug: Option<MemoryHotplug>,
    stop: Arc<AtomicBool>,
    pause: Arc<PauseGate>,
    events: Receiver<VcpuEvent>,
    /// Written by vCPU threads whenever they post a [`VcpuEvent`].
    pub vcpu_event_fd: Arc<EventFd>,
    /// Raised by devices when the guest powers off.
    pub exit_evt: GuestStopEvent,
    /// Raised by devices when the guest requests a reset.
    pub reset_evt: GuestStopEvent,
    /// The serial console, for feeding host input to the guest.
    pub serial: Option<Arc<Mutex<dyn ConsoleInput>>>,
    /// The pty paths of the serial port and the virtio console in `Pty`
    /// mode (reported in `vm.info` as their `file`).
    pub pty_paths: [Option<std::path::PathBuf>; 2],
    /// Guest address of the VM generation ID, if the guest has one.
    generation_id: Option<u64>,
}

fn open_payload(path: &std::path::Path, what: &str) -> Result<File, VmmError> {
    if path.is_dir() {
        return Err(VmmError::Config(format!(
            "--{what}: {} is a directory",
            path.display()
        )));
    }
    File::open(path)
        .map_err(|e| VmmError::Config(format!("--{what}: cannot open {}: {e}", path.display())))
}

/// True when `config` hot-adds RAM through ACPI memory devices.
fn acpi_memory_hotplug(config: &VmConfig) -> bool {
    config.memory.hotplug_room() > 0
        && config.memory.hotplug_method == crate::config::HotplugMethod::Acpi
}

fn eventfd() -> Result<EventFd, VmmError> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::EventFd)
}

impl Vm {
    /// Builds the VM described by `config`, loads the payload and starts its vCPUs.
    /// Each vCPU and device worker thread installs its filter from `filters`.
    pub fn boot(config: &VmConfig, filters: &ThreadFilters) -> Result<Self, VmmError> {
        Self::build(config, filters, VmSource::Boot)
    }

    /// Builds the VM `config` describes from `source`: a fresh boot of the
    /// payload, or a snapshot (then the vCPUs start paused).
    pub fn build(
        config: &VmConfig,
        filters: &ThreadFilters,
        source: VmSource<'_>,
    ) -> Result<Self, VmmError> {
        let ram_size = config.memory.boot_size();
        // A restored VM's RAM includes what was hot-added before the
        // snapshot; the rest is its boot RAM.
        let hot_added: Vec<devices::acpi::MemorySlot> = match &source {
            VmSource::Restore { snapshot, .. } => snapshot.memory_hotplug.clone(),
            VmSource::Boot => Vec::new(),
        };
        let boot_ram = hot_added
            .iter()
            .try_fold(ram_size, |left, s| left.checked_sub(s.len))
            .ok_or_else(|| VmmError::Snapshot("the hot-added memory exceeds memory.size".into()))?;
        if ram_size < MIN_MEMORY {
            return Err(VmmError::Config(format!(
                "--memory: size={ram_size} is too small, chv needs at least {} MiB",
                MIN_MEMORY >> 20
            )));
        }
        let num_vcpus = config.cpus.boot_vcpus;
        if num_vcpus == 0 {
            return Err(VmmError::Config(
                "--cpus: boot=0: at least one vCPU is needed".into(),
            ));
        }
        arch::validate_cpu_features(&config.cpus.features.keep)
            .map_err(|e| VmmError::Config(format!("--cpus: features: {e}")))?;
        let max_vcpus = config.cpus.max_vcpus;
        if max_vcpus > num_vcpus && arch::PLATFORM.acpi_hotplug.is_none() {
            return Err(VmmError::Config(format!(
                "--cpus: max={max_vcpus}: {}",
                arch::PLATFORM.unsupported("vCPU hotplug")
            )));
        }

        if config.serial.mode == ConsoleOutputMode::Tty
            && config.console.mode == ConsoleOutputMode::Tty
        {
            return Err(VmmError::Config(
                "--console: tty is already used by --serial tty; give one of them off, null or file=".into(),
            ));
        }
        let kvm = Kvm::new().map_err(VmmError::Kvm)?;
        let vm_fd = Arc::new(kvm.create_vm().map_err(VmmError::Kvm)?);
        let memory = match &source {
            VmSource::Boot => {
                crate::memory::create_for_config(config)
                    .map_err(|e| VmmError::Memory(e.to_string()))?
                    .memory
            }
            VmSource::Restore {
                snapshot,
                memory: RestoreMemory::File { dir, mode },
            } => snapshot::memory::restore(
                &dir.join(snapshot::MEMORY_FILE),
                &snapshot.memory,
                &crate::memory::all_zones(config),
                *mode,
            )
            .map_err(|e| VmmError::Snapshot(e.to_string()))?,
            VmSource::Restore {
                memory: RestoreMemory::Filled(memory),
                ..
            } => memory.clone(),
        };
        register_memory(&vm_fd, &memory)?;

        let mut machine = arch::Machine::create(&vm_fd)
            .map_err(|e| VmmError::Boot(format!("interrupt controller: {e}")))?;

        // Payload (a restored VM has it in its memory already).
        let kernel = match &source {
            VmSource::Boot => Some(load_payload(config, &memory, &machine, num_vcpus)?),
            VmSource::Restore { .. } => None,
        };
        let generation_id = match &source {
            VmSource::Boot => match arch::PLATFORM.generation_id {
                Some(layout) => {
                    crate::generation_id::write_fresh(&memory, layout.addr)?;
                    Some(layout.addr)
                }
                None => None,
            },
            VmSource::Restore { snapshot, .. } => snapshot.generation_id,
        };

        // Buses and the guest's stop requests.
        let exit_evt = GuestStopEvent::new().map_err(VmmError::EventFd)?;
        let reset_evt = GuestStopEvent::new().map_err(VmmError::EventFd)?;
        let io_bus = Arc::new(Bus::new());
        let mmio_bus = Arc::new(Bus::new());

        // vCPUs, before the devices: on some architectures the interrupt
        // controller is completed only once every vCPU exists, and device
        // interrupts (irqfds) need it.
        let cpu_config = Arc::new(
            arch::CpuConfig::new(
                &kvm,
                &vm_fd,
                &arch::CpuOptions {
                    boot_vcpus: num_vcpus,
                    max_vcpus,
                    keep_features: config.cpus.features.keep.clone(),
                    topology: config.cpus.topology.map(|t| t.to_arch()),
                    max_phys_bits: config.cpus.max_phys_bits,
                    nested: config.cpus.nested,
                },
            )
            .map_err(|e| VmmError::Vcpu(0, e.to_string()))?,
        );
        let stop = Arc::new(AtomicBool::new(false));
        let pause = Arc::new(PauseGate::default());
        if matches!(source, VmSource::Restore { .. }) {
            // A restored VM starts paused; the caller resumes it.
            pause.close();
        }
        let (tx, events) = channel();
        let vcpu_event_fd = Arc::new(eventfd()?);
        let ctx = VcpuContext {
            io_bus: io_bus.clone(),
            mmio_bus: mmio_bus.clone(),
            stop: stop.clone(),
            events: tx,
            event_fd: vcpu_event_fd.clone(),
            guest_stops: [exit_evt.clone(), reset_evt.clone()],
            pause: pause.clone(),
            seccomp_filter: filters.vcpu.clone(),
            placement: Arc::new(crate::vcpu_placement::VcpuPlacement::new(&config.cpus)),
        };
        let mut fds = Vec::with_capacity(usize::from(num_vcpus));
        for id in 0..num_vcpus {
            let vcpu = vm_fd.create_vcpu(u64::from(id)).map_err(VmmError::Kvm)?;
            match &source {
                VmSource::Restore { snapshot, .. } => {
                    let state = snapshot.vcpus.get(usize::from(id)).ok_or_else(|| {
                        VmmError::Snapshot(format!("no saved state for vcpu{id}"))
                    })?;
                    cpu_config
                        .restore(&vcpu, id, state)
                        .map_err(|e| VmmError::Snapshot(format!("vcpu{id}: {e}")))?;
                }
                VmSource::Boot => {
                    let boot = kernel.as_ref().filter(|_| id == 0).map(|k| (&memory, k));
                    cpu_config
                        .configure(&vcpu, id, boot)
                        .map_err(|e| VmmError::Vcpu(id, e.to_string()))?;
                }
            }
            fds.push(vcpu);
        }
        machine
            .finalize(&vm_fd, num_vcpus)
            .map_err(|e| VmmError::Boot(format!("interrupt controller: {e}")))?;

        // Devices.
        let worker_setup = filters.worker.clone().map(|f| {
            Arc::new(move || devices::seccomp::apply_current_thread(&f).map_err(|e| e.to_string()))
                as virtio_devices::worker::ThreadSetup
        });
        let serial_host = HostConsole::open(&config.serial, "serial", worker_setup.clone())
            .map_err(VmmError::Config)?;
        let serial_out = match (&config.serial.mode, &serial_host) {
            (ConsoleOutputMode::Off, _) => None,
            (_, Some(host)) => Some(Some(host.output().map_err(VmmError::Thread)?)),
            _ => Some(
                crate::console_host::open_output(&config.serial, "serial")
                    .map_err(VmmError::Config)?,
            ),
        };
        let ram = arch::ram_regions(boot_ram);
        let legacy = PlatformDevices::new(PlatformContext {
            vm_fd: &vm_fd,
            io_bus: &io_bus,
            mmio_bus: &mmio_bus,
            ram: &ram,
            serial_out,
            exit_evt: &exit_evt,
            reset_evt: &reset_evt,
            msi: machine.msi_delivery(),
        })?;
        let serial = legacy.console();
        let mut pci_devices = DeviceManager::new(
            vm_fd.clone(),
            GuestMemoryAtomic::new(memory.clone()),
            &io_bus,
            mmio_bus.clone(),
            worker_setup.clone(),
            &crate::device_manager::pci_segment_layouts(config)?,
            machine.msi_delivery(),
        )?;
        if let VmSource::Restore { snapshot, .. } = &source {
            pci_devices.restore_slots(&snapshot.devices);
        }
        pci_devices.add_configured_devices(config)?;
        if let VmSource::Restore { snapshot, .. } = &source {
            pci_devices
                .restore_devices(&snapshot.devices)
                .map_err(|e| VmmError::Snapshot(e.to_string()))?;
            // A restored VM starts paused, devices included, so it can be
            // snapshotted again before it runs; `resume` restarts them.
            pci_devices
                .pause_all()
                .map_err(|e| VmmError::Snapshot(e.to_string()))?;
            machine
                .restore_state(&vm_fd, &snapshot.vm)
                .map_err(|e| VmmError::Snapshot(e.to_string()))?;
            // After the interrupt controllers: an interrupt a legacy device
            // raises again on restore (the UART's pending RX or THR-empty)
            // would be wiped by KVM_SET_IRQCHIP if sent before it.
            legacy.restore(&snapshot.legacy)?;
        }
        // Host input reaches the UART only once its saved state and the
        // interrupt controllers' are back: bytes fed before would be
        // overwritten, or their interrupt lost (a clone's first command
        // never answered).
        if let (Some(host), Some(serial)) = (&serial_host, &serial) {
            host.feed_serial(serial.clone(), worker_setup.clone())
                .map_err(VmmError::Thread)?;
        }
        if let VmSource::Restore {
            memory: RestoreMemory::File { .. },
            ..
        } = &source
        {
            // A copy of the snapshotted VM, not the VM itself (as after a
            // migration): the guest must learn it, after the irqchip state
            // is back so the GED interrupt is not lost.
            crate::generation_id::renew_after_restore(
                &memory,
                generation_id,
                pci_devices.ged_events().as_ref(),
            )?;
        }
        let cpu_hotplug = match (arch::PLATFORM.acpi_hotplug, pci_devices.ged_events()) {
            (Some(layout), Some(ged)) if max_vcpus > num_vcpus => {
                let setup = VcpuSetup {
                    vm_fd: vm_fd.clone(),
                    ctx: ctx.clone(),
                    cpu_config,
                };
                Some(
                    VcpuHotplug::new(setup, num_vcpus, max_vcpus, &io_bus, &layout, ged)
                        .map_err(VmmError::Bus)?,
                )
            }
            _ => None,
        };
        let memory_hotplug = match (arch::PLATFORM.acpi_hotplug, pci_devices.ged_events()) {
            (Some(layout), Some(ged)) if acpi_memory_hotplug(config) => {
                let room = config.memory.hotplug_room();
                let ram_end = ram.last().map_or(0, |(start, len)| start.0 + *len as u64);
                if layout.hotplug_range(ram_end, 0, room).is_none() {
                    return Err(VmmError::Config(format!(
                        "--memory: memory.hotplug_size={room}: RAM above {ram_end:#x} that large \
                         does not fit below the 64-bit PCI window"
                    )));
                }
                let backing = crate::memory::zones_for(config)
                    .into_iter()
                    .next()
                    .map(|z| z.backing)
                    .unwrap_or_default();
                let mut hotplug =
                    MemoryHotplug::new(layout, &io_bus, ged, backing, (boot_ram, ram_end, room))
                        .map_err(VmmError::Bus)?;
                hotplug.restore(&hot_added).map_err(VmmError::Snapshot)?;
                Some(hotplug)
            }
            _ => None,
        };
        let pci_devices_console_pty = pci_devices.console_pty.clone();
        let mut vcpus = Vec::with_capacity(fds.len());
        for (id, fd) in (0..num_vcpus).zip(fds) {
            vcpus.push(vcpu::spawn(id, fd, ctx.clone()).map_err(VmmError::Thread)?);
        }

        Ok(Self {
            kvm,
            devices: pci_devices,
            vm_fd,
            memory,
            machine,
            legacy,
            vcpus,
            cpu_hotplug,
            memory_hotplug,
            stop,
            pause,
            events,
            vcpu_event_fd,
            exit_evt,
            reset_evt,
            serial,
            pty_paths: [
                serial_host.and_then(|h| h.pty_path),
                pci_devices_console_pty,
            ],
            generation_id,
        })
    }

    /// Collects what the vCPU threads reported since the last call.
    /// Also stops and joins the threads of vCPUs the guest has just
    /// ejected, so the vCPU list matches the guest's CPUs again.
    pub fn take_vcpu_events(&mut self) -> Vec<VcpuEvent> {
        let _ = self.vcpu_event_fd.read();
        self.reap_ejected_vcpus();
        self.events.try_iter().collect()
    }

    /// `vm.resize` with `desired_vcpus`: hot-adds vCPUs up to `desired`
    /// (the guest then onlines them), or asks the guest to eject those
    /// from `desired` up (done once the guest ejected them). Returns at
    /// once; the guest completes the change asynchronously.
    pub fn resize_vcpus(&mut self, desired: u8) -> Result<(), ResizeError> {
        match self.cpu_hotplug.as_mut() {
            Some(h) => h.resize(&mut self.vcpus, &self.pause, desired),
            None => {
                let current = u8::try_from(self.vcpus.len()).unwrap_or(u8::MAX);
                if desired == current {
                    Ok(())
                } else {
                    Err(ResizeError::NotHotpluggable { desired, current })
                }
            }
        }
    }

    /// Guest RAM now, in bytes: the boot RAM plus what was hot-added
    /// (ACPI) or plugged (virtio-mem; its region counts only as far as
    /// plugged).
    pub fn ram_size(&self) -> u64 {
        let all: u64 = self.memory.iter().map(|r| r.len()).sum();
        match self.devices.virtio_mem() {
            Some(m) => all.saturating_sub(m.options().region_size) + m.plugged_bytes(),
            None => all,
        }
    }

    /// Guest RAM minus what the balloon holds (`memory_actual_size`).
    pub fn actual_ram_size(&self) -> u64 {
        let ballooned = self.devices.balloon().map_or(0, |b| b.actual_bytes());
        self.ram_size().saturating_sub(ballooned)
    }

    /// `vm.resize` with `desired_ram`: hot-adds a range of RAM so the guest
    /// has `desired` bytes (ACPI memory hotplug; the guest onlines it).
    /// Returns once the range is mapped and the guest notified.
    pub fn resize_memory(&mut self, desired: u64) -> Result<(), MemoryResizeError> {
        if let Some(control) = self.devices.virtio_mem() {
            return crate::memory::hotplug::resize_virtio_mem(control, self.ram_size(), desired);
        }
        let current = self.ram_size();
        let Some(hotplug) = self.memory_hotplug.as_mut() else {
            if desired == current {
                return Ok(());
            }
            return Err(MemoryResizeError::NotHotpluggable { desired, current });
        };
        let Some(region) = hotplug.grow(desired)? else {
            return Ok(());
        };
        let (base, len) = (region.start_addr().0, region.len());
        let slot = u32::try_from(self.memory.num_regions())
            .map_err(|_| MemoryResizeError::Map("too many memory regions".into()))?;
        let mem_region = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: base,
            memory_size: len,
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping that `self.memory` keeps
        // from here on, and it outlives the VM fd (see `register_memory`).
        unsafe { self.vm_fd.set_user_memory_region(mem_region) }
            .map_err(|e| MemoryResizeError::Map(format!("KVM_SET_USER_MEMORY_REGION: {e}")))?;
        self.memory = self
            .memory
            .insert_region(Arc::new(region))
            .map_err(|e| MemoryResizeError::Map(e.to_string()))?;
        self.devices.update_memory(&self.memory);
        hotplug.announce(base, len)
    }

    /// Joins the threads of vCPUs the guest ejected, so the running vCPUs
    /// are exactly `0..vcpu_count()` again.
    fn reap_ejected_vcpus(&mut self) {
        if let Some(h) = self.cpu_hotplug.as_mut() {
            h.reap(&mut self.vcpus, &self.pause);
        }
    }

    /// Number of vCPU threads (running or paused).
    pub fn vcpu_count(&self) -> usize {
        self.vcpus.len()
    }

    fn kick(handle: &VcpuHandle) {
        // SAFETY: the pthread handle is alive (the thread has not been
        // joined) and the kick signal has a handler installed.
        unsafe { libc::pthread_kill(handle.thread.as_pthread_t(), vcpu::kick_signal()) };
    }

    /// Stops every vCPU between two guest instructions, then every device
    /// worker; returns once all of them are stopped (or after a timeout,
    /// with an error and the VM running again).
    pub fn pause(&self) -> Result<(), VmmError> {
        self.pause_vcpus()?;
        if let Err(e) = self.devices.pause_all() {
            self.resume();
            return Err(VmmError::Device(format!("pause: {e}")));
        }
        Ok(())
    }

    fn pause_vcpus(&self) -> Result<(), VmmError> {
        self.pause.close();
        let deadline = Instant::now() + Duration::from_secs(5);
        let running = || {
            self.vcpus
                .iter()
                .filter(|h| !h.thread.is_finished())
                .count()
        };
        while self.pause.parked() < running() {
            if Instant::now() > deadline {
                self.pause.open();
                return Err(VmmError::Guest(
                    "pause: vCPUs did not stop within 5 s".into(),
                ));
            }
            for h in &self.vcpus {
                Self::kick(h);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    }

    /// Restarts the device workers, then lets paused vCPUs run again.
    pub fn resume(&self) {
        if let Err(e) = self.devices.resume_all() {
            log::error!("resume: {e}");
        }
        self.pause.open();
    }

    /// Writes a snapshot of this paused VM (configuration `config`) into
    /// `dir`, creating it if needed: guest memory first, then the state
    /// file, so only a complete snapshot has one.
    pub fn snapshot(&self, config: &VmConfig, dir: &Path) -> Result<(), SnapshotError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| SnapshotError::Io(format!("creating {}: {e}", dir.display())))?;
        let mut state = self.state(config)?;
        state.memory = snapshot::memory::save(&self.memory, &dir.join(snapshot::MEMORY_FILE))?;
        state.write(dir)
    }

    /// Everything but guest RAM, for a snapshot or a migration; call with
    /// the VM paused. `memory` is left empty for the caller to fill in.
    pub fn state(&self, config: &VmConfig) -> Result<VmSnapshot, SnapshotError> {
        let mut vcpus = Vec::with_capacity(self.vcpus.len());
        let mut omitted = Vec::new();
        for (id, handle) in self.vcpus.iter().enumerate() {
            let fd = handle.fd.lock().unwrap_or_else(|e| e.into_inner());
            let state = arch::VcpuState::save(&fd, &self.kvm)
                .map_err(|e| SnapshotError::Kvm(format!("vcpu{id}: {e}")))?;
            for what in &state.omitted {
                let what = format!("vcpu{id}: {what}");
                log::info!("snapshot leaves out {what}");
                omitted.push(what);
            }
            vcpus.push(state);
        }
        let vm = self
            .machine
            .save_state(&self.vm_fd)
            .map_err(|e| SnapshotError::Kvm(e.to_string()))?;
        let devices = self.devices.snapshot().map_err(|e| {
            if e.contains(snapshot::UNSUPPORTED_MARKER) {
                SnapshotError::Unsupported(e)
            } else {
                SnapshotError::Device(e)
            }
        })?;
        let legacy = self.legacy.state();
        Ok(VmSnapshot {
            format: snapshot::SNAPSHOT_FORMAT.into(),
            version: snapshot::SNAPSHOT_VERSION,
            chv_version: env!("CARGO_PKG_VERSION").into(),
            config: config.clone(),
            memory: Vec::new(),
            vm,
            vcpus,
            legacy,
            devices,
            memory_hotplug: self
                .memory_hotplug
                .as_ref()
                .map(MemoryHotplug::slots)
                .unwrap_or_default(),
            omitted,
            generation_id: self.generation_id,
        })
    }

    /// Guest RAM.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// Turns KVM's dirty-page logging of guest RAM on or off (turning it on
    /// also starts a fresh log).
    pub fn set_dirty_logging(&self, on: bool) -> Result<(), VmmError> {
        let flags = if on { KVM_MEM_LOG_DIRTY_PAGES } else { 0 };
        register_memory_with(&self.vm_fd, &self.memory, flags)
    }

    /// Pages of RAM region `slot` written by vCPUs since the last call (one
    /// bit per 4 KiB page); clears the log.
    pub fn dirty_log(&self, slot: u32, len: usize) -> Result<Vec<u64>, VmmError> {
        self.vm_fd.get_dirty_log(slot, len).map_err(VmmError::Kvm)
    }

    /// Stops every vCPU thread and waits for them to finish.
    pub fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.pause.wake_all();
        let deadline = Instant::now() + Duration::from_secs(5);
        for handle in self.vcpus.drain(..) {
            while !handle.thread.is_finished() && Instant::now() < deadline {
                Self::kick(&handle);
                std::thread::sleep(Duration::from_millis(1));
            }
            if handle.thread.is_finished() {
                let _ = handle.thread.join();
            } else {
                log::warn!("a vCPU thread did not stop in time; leaving it behind");
            }
        }
        crate::guest_profile::flush();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Loads the payload (kernel, initramfs, command line) and the firmware
/// description; returns where the boot vCPU starts.
fn load_payload(
    config: &VmConfig,
    memory: &GuestMemoryMmap,
    machine: &arch::Machine,
    num_vcpus: u8,
) -> Result<arch::BootEntry, VmmError> {
    let payload = &config.payload;
    let identity = config.platform.clone().unwrap_or_default().identity();
    let pci_segments = crate::device_manager::pci_segment_layouts(config)?;
    let kernel_path = payload
        .kernel
        .as_ref()
        .ok_or_else(|| VmmError::Config("--kernel: no kernel given".into()))?;
    let mut kernel_file = open_payload(kernel_path, "kernel")?;
    let mut initramfs_file = match &payload.initramfs {
        Some(p) => Some(open_payload(p, "initramfs")?),
        None => None,
    };
    arch::load_payload(
        memory,
        machine,
        arch::Payload {
            kernel: &mut kernel_file,
            initramfs: initramfs_file.as_mut(),
            cmdline: payload.cmdline.as_deref().unwrap_or(""),
            ram_size: config.memory.boot_size(),
            boot_vcpus: num_vcpus,
            max_vcpus: config.cpus.max_vcpus,
            hotplug_slots: crate::device_manager::hotplug_slots_for(config),
            pci_segments: &pci_segments,
            memory_hotplug: acpi_memory_hotplug(config),
            identity: &identity,
        },
    )
    .map_err(|e| match e {
        arch::PayloadError::Kernel(e) => {
            VmmError::Boot(format!("--kernel {}: {e}", kernel_path.display()))
        }
        arch::PayloadError::Initramfs(e) => {
            let path = payload.initramfs.as_deref().unwrap_or(Path::new(""));
            VmmError::Boot(format!("--initramfs {}: {e}", path.display()))
        }
        other => VmmError::Boot(other.to_string()),
    })
}

/// Tells KVM where each region of `memory` is.
fn register_memory(vm_fd: &VmFd, memory: &GuestMemoryMmap) -> Result<(), VmmError> {
    register_memory_with(vm_fd, memory, 0)
}

/// As [`register_memory`], with KVM memory-slot `flags`; slot numbers are
/// the regions' positions in `memory`.
fn register_memory_with(
    vm_fd: &VmFd,
    memory: &GuestMemoryMmap,
    flags: u32,
) -> Result<(), VmmError> {
    for (slot, region) in memory.iter().enumerate() {
        let host = memory
            .get_host_address(region.start_addr())
            .map_err(|e| VmmError::Memory(e.to_string()))?;
        let mem_region = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags,
        };
        // SAFETY: the region is a live mmap owned by `memory`, which outlives
        // the VM fd (both are dropped together in `Vm`, the VM first).
        unsafe { vm_fd.set_user_memory_region(mem_region) }.map_err(VmmError::Kvm)?;
    }
    Ok(())
}
