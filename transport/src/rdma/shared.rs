//! Memory registered once per RDMA device for every connection a listener accepts through
//! that device (a server's memory pool), instead of once per connection; the public face is
//! [`Listener::register_memory`](crate::server::Listener::register_memory).

use std::net::SocketAddr;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use super::connection::{MemoryRegion, RdmaDomain, device_context};
use super::error::{Op, RdmaError};
use super::sys::CmId;

/// Whatever keeps a shared area's memory allocated (a memory pool, say).
pub(crate) type Owner = Arc<dyn std::any::Any + Send + Sync>;

/// Memory a listener registers once with each RDMA device it accepts connections through
/// (`RdmaListener::accept_shared`). The first
/// connection through a device makes a protection domain for it ([`RdmaDomain`]) and
/// registers every area there; later connections through the same device share that domain
/// and those registrations. Areas added later are registered with the devices seen so far
/// and serve connections accepted after.
#[derive(Default)]
pub(crate) struct SharedMemory {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    areas: Vec<Area>,
    devices: Vec<Device>,
}

/// One area of caller memory and what keeps it allocated.
struct Area {
    ptr: NonNull<u8>,
    len: usize,
    owner: Owner,
}

// SAFETY: an area is an address range and its owner (Send + Sync); the listener never reads
// or writes the memory through `ptr`, it only registers it.
unsafe impl Send for Area {}

/// A device's domain and the areas registered in it, in area order (an area whose
/// registration failed there is missing: its bulk is staged on that device).
struct Device {
    domain: RdmaDomain,
    regions: Vec<Arc<Region>>,
}

/// A registration that a connection's link uses: its own (from
/// [`RdmaConnection::register_raw`](super::RdmaConnection::register_raw)) or a device's
/// share of a [`SharedMemory`] area, which keeps the area's owner alive after the region.
pub(crate) struct Region {
    // Declared first: deregistered before the owner may free the memory.
    region: MemoryRegion<'static>,
    _owner: Option<Owner>,
}

impl Region {
    /// A connection's own registration.
    pub(crate) fn own(region: MemoryRegion<'static>) -> Region {
        Region {
            region,
            _owner: None,
        }
    }

    /// The registration.
    pub(crate) fn region(&self) -> &MemoryRegion<'static> {
        &self.region
    }
}

impl std::fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f.debug_struct("SharedMemory")
            .field("areas", &state.areas.len())
            .field("devices", &state.devices.len())
            .finish()
    }
}

impl SharedMemory {
    /// No memory and no device yet.
    pub(crate) fn new() -> SharedMemory {
        SharedMemory::default()
    }

    /// Adds `[ptr, ptr + len)`, registering it with every device seen so far; an error
    /// (and nothing added) when that fails or the area is empty or longer than
    /// [`MAX_REGION_BYTES`](super::MAX_REGION_BYTES).
    ///
    /// # Safety
    /// The memory must stay allocated while `owner` lives; the listener and every connection
    /// using a registration of it hold `owner`. Peers may read and write it through RDMA
    /// meanwhile: the protocol above says when.
    pub(crate) unsafe fn add(
        &self,
        owner: Owner,
        ptr: *mut u8,
        len: usize,
    ) -> Result<(), RdmaError> {
        let local = SocketAddr::from(([0, 0, 0, 0], 0));
        let Some(ptr) = NonNull::new(ptr).filter(|_| len > 0) else {
            return Err(RdmaError::Call {
                op: Op::Register,
                peer: local,
                call: "shared memory",
                errno: libc::EINVAL,
            });
        };
        let area = Area { ptr, len, owner };
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut made = Vec::with_capacity(state.devices.len());
        for device in &state.devices {
            // SAFETY: the caller keeps the memory allocated while the owner lives, and the
            // region holds the owner.
            made.push(unsafe { register(&device.domain, &area) }?);
        }
        for (device, region) in state.devices.iter_mut().zip(made) {
            device.regions.push(region);
        }
        state.areas.push(area);
        Ok(())
    }

    /// Registrations made so far: for each device seen, one per area.
    pub(crate) fn registrations(&self) -> usize {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.devices.iter().map(|d| d.regions.len()).sum()
    }

    /// The domain of the device behind `id` (a connect request's) and the areas registered
    /// in it; the first connection through a device makes both. An area that cannot be
    /// registered is logged and left out (its bulk is staged).
    pub(crate) fn for_device(
        &self,
        id: &CmId,
        peer: SocketAddr,
    ) -> Result<(RdmaDomain, Vec<Arc<Region>>), RdmaError> {
        let op = Op::Accept;
        let context = device_context(id, op, peer)?;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = state
            .devices
            .iter()
            .find(|d| d.domain.context() == context.as_ptr())
        {
            return Ok((d.domain.clone(), d.regions.clone()));
        }
        let local = id.local_addr().ok_or(RdmaError::Call {
            op,
            peer,
            call: "rdma_cm_id.local_addr",
            errno: libc::EADDRNOTAVAIL,
        })?;
        let domain = RdmaDomain::for_local(local.ip())?;
        let mut regions = Vec::with_capacity(state.areas.len());
        for area in &state.areas {
            // SAFETY: `add`'s caller keeps the memory allocated while the owner lives, and
            // the region holds the owner.
            match unsafe { register(&domain, area) } {
                Ok(r) => regions.push(r),
                Err(e) => crate::log_line!(
                    "nacre-transport: {} bytes of shared memory stay unregistered on {}: {e}",
                    area.len,
                    domain.device_name()
                ),
            }
        }
        state.devices.push(Device {
            domain: domain.clone(),
            regions: regions.clone(),
        });
        Ok((domain, regions))
    }
}

/// Registers `area` in `domain`.
///
/// # Safety
/// The area's memory stays allocated while its owner lives.
unsafe fn register(domain: &RdmaDomain, area: &Area) -> Result<Arc<Region>, RdmaError> {
    // SAFETY: the region holds the owner, so the memory outlives the registration; nothing
    // in Rust reads or writes it through the region's Deref (links use addresses only).
    let region = unsafe { domain.register_raw(area.ptr.as_ptr(), area.len) }?;
    Ok(Arc::new(Region {
        region,
        _owner: Some(Arc::clone(&area.owner)),
    }))
}
