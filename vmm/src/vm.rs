//! One guest: its KVM VM, memory, devices and vCPU threads, from creation to
//! the moment the guest powers off or resets.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arch::layout;
use devices::legacy::{AcpiPmDevice, AcpiPmTimer, Cmos, GuestStopEvent, I8042Device, SerialDevice};
use devices::Bus;
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::config::{ConsoleConfig, ConsoleOutputMode, VmConfig};
use crate::control_loop::ThreadFilters;
use crate::device_manager::DeviceManager;
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

/// A booted VM: KVM handles, guest memory, the buses and the vCPU threads.
pub struct Vm {
    _kvm: Kvm,
    /// Virtio devices on the PCI bus (dropped before the VM fd).
    pub devices: DeviceManager,
    _vm_fd: Arc<VmFd>,
    _memory: GuestMemoryMmap,
    vcpus: Vec<VcpuHandle>,
    stop: Arc<AtomicBool>,
    pause: Arc<PauseGate>,
    events: Receiver<VcpuEvent>,
    /// Written by vCPU threads whenever they post a [`VcpuEvent`].
    pub vcpu_event_fd: Arc<EventFd>,
    /// Raised by devices when the guest powers off.
    pub exit_evt: GuestStopEvent,
    /// Raised by devices when the guest requests a reset.
    pub reset_evt: GuestStopEvent,
    /// The COM1 device, for feeding host input to the guest.
    pub serial: Option<Arc<Mutex<SerialDevice>>>,
}

fn open_output(cfg: &ConsoleConfig, what: &str) -> Result<Option<Box<dyn Write + Send>>, VmmError> {
    Ok(match cfg.mode {
        ConsoleOutputMode::Off | ConsoleOutputMode::Null => None,
        ConsoleOutputMode::Tty => Some(Box::new(std::io::stdout())),
        ConsoleOutputMode::File => {
            let path = cfg.file.as_ref().ok_or_else(|| {
                VmmError::Config(format!("--{what}: file mode needs a path (file=PATH)"))
            })?;
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| {
                    VmmError::Config(format!("--{what}: cannot open {}: {e}", path.display()))
                })?;
            Some(Box::new(f))
        }
    })
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

fn eventfd() -> Result<EventFd, VmmError> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::EventFd)
}

impl Vm {
    /// Builds the VM described by `config`, loads the payload and starts its vCPUs.
    /// Each vCPU and device worker thread installs its filter from `filters`.
    pub fn boot(config: &VmConfig, filters: &ThreadFilters) -> Result<Self, VmmError> {
        let payload = &config.payload;
        let kernel_path = payload
            .kernel
            .as_ref()
            .ok_or_else(|| VmmError::Config("--kernel: no kernel given".into()))?;
        let mut kernel_file = open_payload(kernel_path, "kernel")?;
        let mut initramfs_file = match &payload.initramfs {
            Some(p) => Some(open_payload(p, "initramfs")?),
            None => None,
        };
        let ram_size = config.memory.size;
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
        arch::cpuid::validate_feature_names(&config.cpus.features.keep)
            .map_err(|e| VmmError::Config(format!("--cpus: features: {e}")))?;

        if config.serial.mode == ConsoleOutputMode::Tty
            && config.console.mode == ConsoleOutputMode::Tty
        {
            return Err(VmmError::Config(
                "--console: tty is already used by --serial tty; give one of them off, null or file=".into(),
            ));
        }
        let kvm = Kvm::new().map_err(VmmError::Kvm)?;
        let vm_fd = Arc::new(kvm.create_vm().map_err(VmmError::Kvm)?);
        let memory = create_memory(&vm_fd, ram_size)?;

        vm_fd
            .set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDRESS)
            .map_err(VmmError::Kvm)?;
        vm_fd
            .set_tss_address(layout::KVM_TSS_ADDRESS as usize)
            .map_err(VmmError::Kvm)?;
        vm_fd.create_irq_chip().map_err(VmmError::Kvm)?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm_fd.create_pit2(pit).map_err(VmmError::Kvm)?;

        // Payload.
        let kernel = arch::boot::load_kernel(&memory, &mut kernel_file)
            .map_err(|e| VmmError::Boot(format!("--kernel {}: {e}", kernel_path.display())))?;
        let initramfs = match (&mut initramfs_file, &payload.initramfs) {
            (Some(f), Some(p)) => Some(
                arch::boot::load_initramfs(&memory, f)
                    .map_err(|e| VmmError::Boot(format!("--initramfs {}: {e}", p.display())))?,
            ),
            _ => None,
        };
        let rsdp = arch::acpi::create_acpi_tables(
            &memory,
            num_vcpus,
            crate::device_manager::hotplug_slots_for(config),
        )
        .map_err(|e| VmmError::Boot(format!("ACPI tables: {e}")))?;
        let cmdline = payload.cmdline.as_deref().unwrap_or("");
        arch::boot::configure_system(
            &memory,
            &kernel,
            cmdline,
            initramfs.as_ref(),
            Some(rsdp),
            ram_size,
        )
        .map_err(|e| VmmError::Boot(e.to_string()))?;

        // Devices.
        let exit_evt = GuestStopEvent::new().map_err(VmmError::EventFd)?;
        let reset_evt = GuestStopEvent::new().map_err(VmmError::EventFd)?;
        let io_bus = Arc::new(Bus::new());
        let mmio_bus = Arc::new(Bus::new());
        let serial = if config.serial.mode == ConsoleOutputMode::Off {
            None
        } else {
            let irq = eventfd()?;
            vm_fd
                .register_irqfd(&irq, layout::COM1_IRQ)
                .map_err(VmmError::Kvm)?;
            let out = open_output(&config.serial, "serial")?;
            let dev = Arc::new(Mutex::new(SerialDevice::new(irq, out)));
            io_bus
                .insert(dev.clone(), u64::from(layout::COM1_PORT), 8)
                .map_err(VmmError::Bus)?;
            Some(dev)
        };
        let below_4g = ram_size.min(layout::MEM_32BIT_GAP_START);
        let above_4g = ram_size - below_4g;
        let legacy: [(devices::SharedDevice, u16, u64); 4] = [
            (
                Arc::new(Mutex::new(I8042Device::new(reset_evt.clone()))),
                layout::I8042_PORT,
                5,
            ),
            (
                Arc::new(Mutex::new(Cmos::new(below_4g, above_4g))),
                layout::CMOS_PORT,
                2,
            ),
            (
                Arc::new(Mutex::new(AcpiPmDevice::new(
                    exit_evt.clone(),
                    reset_evt.clone(),
                ))),
                layout::ACPI_PM_PORT,
                1,
            ),
            (
                Arc::new(Mutex::new(AcpiPmTimer::new())),
                layout::ACPI_PM_TIMER_PORT,
                4,
            ),
        ];
        for (dev, port, len) in legacy {
            io_bus
                .insert(dev, u64::from(port), len)
                .map_err(VmmError::Bus)?;
        }
        let mut pci_devices = DeviceManager::new(
            vm_fd.clone(),
            GuestMemoryAtomic::new(memory.clone()),
            &io_bus,
            mmio_bus.clone(),
            filters.worker.clone().map(|f| {
                Arc::new(move || {
                    devices::seccomp::apply_current_thread(&f).map_err(|e| e.to_string())
                }) as virtio_devices::worker::ThreadSetup
            }),
        )?;
        pci_devices.add_configured_devices(config)?;

        // vCPUs.
        let supported = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(VmmError::Kvm)?;
        let policy = arch::cpuid::CpuidPolicy {
            hide_pvm_unsupported: arch::cpuid::is_pvm_host(),
            keep: config.cpus.features.keep.clone(),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let pause = Arc::new(PauseGate::default());
        let (tx, events) = channel();
        let vcpu_event_fd = Arc::new(eventfd()?);
        let ctx = VcpuContext {
            io_bus,
            mmio_bus,
            stop: stop.clone(),
            events: tx,
            event_fd: vcpu_event_fd.clone(),
            guest_stops: [exit_evt.clone(), reset_evt.clone()],
            pause: pause.clone(),
            seccomp_filter: filters.vcpu.clone(),
        };
        let mut fds = Vec::with_capacity(usize::from(num_vcpus));
        for id in 0..num_vcpus {
            let vcpu = vm_fd.create_vcpu(u64::from(id)).map_err(VmmError::Kvm)?;
            let cpuid = arch::cpuid::vcpu_cpuid(&supported, id, num_vcpus, &policy)
                .map_err(|e| VmmError::Vcpu(id, e.to_string()))?;
            let boot = (id == 0).then_some((&memory, &kernel));
            arch::regs::configure_vcpu(&vcpu, &cpuid, boot)
                .map_err(|e| VmmError::Vcpu(id, e.to_string()))?;
            if id == 0 {
                warn_reexposed_features(&vcpu, &policy);
            }
            fds.push(vcpu);
        }
        let mut vcpus = Vec::with_capacity(fds.len());
        for (id, fd) in (0..num_vcpus).zip(fds) {
            vcpus.push(vcpu::spawn(id, fd, ctx.clone()).map_err(VmmError::Thread)?);
        }

        Ok(Self {
            _kvm: kvm,
            devices: pci_devices,
            _vm_fd: vm_fd,
            _memory: memory,
            vcpus,
            stop,
            pause,
            events,
            vcpu_event_fd,
            exit_evt,
            reset_evt,
            serial,
        })
    }

    /// Collects what the vCPU threads reported since the last call.
    pub fn take_vcpu_events(&self) -> Vec<VcpuEvent> {
        let _ = self.vcpu_event_fd.read();
        self.events.try_iter().collect()
    }

    fn kick(handle: &VcpuHandle) {
        // SAFETY: the pthread handle is alive (the thread has not been
        // joined) and the kick signal has a handler installed.
        unsafe { libc::pthread_kill(handle.thread.as_pthread_t(), vcpu::kick_signal()) };
    }

    /// Stops every vCPU between two guest instructions; returns once all of
    /// them are parked (or after a timeout, with an error).
    pub fn pause(&self) -> Result<(), VmmError> {
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

    /// Lets paused vCPUs run again.
    pub fn resume(&self) {
        self.pause.open();
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
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Warns when the host put back CPU features chv hid (PVM merges the host's
/// leaf-1 bits into the guest CPUID): the guest kernel must then avoid those
/// instructions itself, as the guest kit's kernel does.
fn warn_reexposed_features(vcpu: &kvm_ioctls::VcpuFd, policy: &arch::cpuid::CpuidPolicy) {
    if !policy.hide_pvm_unsupported {
        return;
    }
    match vcpu.get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES) {
        Ok(effective) => {
            let back = arch::cpuid::reexposed_features(&effective, policy);
            if !back.is_empty() {
                log::warn!(
                    "this host's KVM re-exposes CPU features chv hid from the guest: {}; \
                     the guest kernel must avoid them itself",
                    back.join(", ")
                );
            }
        }
        Err(e) => log::debug!("cannot read back the vCPU CPUID: {e}"),
    }
}

fn create_memory(vm_fd: &VmFd, ram_size: u64) -> Result<GuestMemoryMmap, VmmError> {
    let regions = arch::memory::ram_regions(ram_size);
    let memory =
        GuestMemoryMmap::from_ranges(&regions).map_err(|e| VmmError::Memory(e.to_string()))?;
    for (slot, region) in memory.iter().enumerate() {
        let host = memory
            .get_host_address(region.start_addr())
            .map_err(|e| VmmError::Memory(e.to_string()))?;
        let mem_region = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mmap owned by `memory`, which outlives
        // the VM fd (both are dropped together in `Vm`, the VM first).
        unsafe { vm_fd.set_user_memory_region(mem_region) }.map_err(VmmError::Kvm)?;
    }
    Ok(memory)
}
