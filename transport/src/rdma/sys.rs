//! Owners of the raw rdmacm and verbs objects. Each owner holds an `Arc` of every object it
//! depends on, so the dependency graph (QP → PD, CQ, CM id; CQ → completion channel;
//! PD → CM id; CM id → event channel) is destroyed leaves first whatever order the
//! holders drop in. Nothing here is public outside the module.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Instant;

use rdma_sys as ffi;

use super::error::last_errno;

/// An rdmacm event channel: the fd on which connection-manager events arrive.
pub(crate) struct EventChannel {
    raw: NonNull<ffi::rdma_event_channel>,
}

// SAFETY: librdmacm objects may be used from any thread; the channel is only read through
// `&self` by one waiter at a time (the owner of the id holding it).
unsafe impl Send for EventChannel {}
// SAFETY: as above; rdma_get_cm_event is thread safe.
unsafe impl Sync for EventChannel {}

impl EventChannel {
    /// Opens a channel with a non-blocking fd (every wait is a bounded `poll`).
    pub(crate) fn new() -> Result<Self, (&'static str, i32)> {
        // SAFETY: no arguments; a null result is handled.
        let raw = unsafe { ffi::rdma_create_event_channel() };
        let raw = NonNull::new(raw).ok_or(("rdma_create_event_channel", last_errno()))?;
        let channel = EventChannel { raw };
        set_nonblocking(channel.fd()).map_err(|errno| ("fcntl(O_NONBLOCK)", errno))?;
        Ok(channel)
    }

    pub(crate) fn fd(&self) -> i32 {
        // SAFETY: `raw` is a live channel owned by self.
        unsafe { (*self.raw.as_ptr()).fd }
    }

    pub(crate) fn as_ptr(&self) -> *mut ffi::rdma_event_channel {
        self.raw.as_ptr()
    }

    /// The next event, or `None` when `deadline` passes first. The event is acknowledged
    /// before returning, so no id is ever kept from being destroyed by an unacked event.
    pub(crate) fn next_event(
        &self,
        deadline: Instant,
    ) -> Result<Option<CmEvent>, (&'static str, i32)> {
        loop {
            let mut event: *mut ffi::rdma_cm_event = std::ptr::null_mut();
            // SAFETY: the channel is live; `event` is a valid out-pointer. The fd is
            // non-blocking, so this returns EAGAIN instead of waiting.
            let rc = unsafe { ffi::rdma_get_cm_event(self.as_ptr(), &mut event) };
            if rc == 0 {
                // SAFETY: rdma_get_cm_event succeeded, so `event` points to a live event
                // until it is acknowledged below; only plain fields are copied out.
                let copied = unsafe {
                    let e = &*event;
                    CmEvent {
                        kind: e.event,
                        status: e.status,
                        id: e.id,
                        responder_resources: e.param.conn.responder_resources,
                        initiator_depth: e.param.conn.initiator_depth,
                    }
                };
                // SAFETY: `event` came from rdma_get_cm_event and is acknowledged once.
                unsafe { ffi::rdma_ack_cm_event(event) };
                return Ok(Some(copied));
            }
            let errno = last_errno();
            if errno != libc::EAGAIN && errno != libc::EWOULDBLOCK && errno != libc::EINTR {
                return Err(("rdma_get_cm_event", errno));
            }
            match poll_fds(&[self.fd()], deadline).map_err(|e| ("poll", e))? {
                Some(_) => continue,
                None => return Ok(None),
            }
        }
    }
}

impl Drop for EventChannel {
    fn drop(&mut self) {
        // SAFETY: every id on this channel holds an Arc of it, so none is left.
        unsafe { ffi::rdma_destroy_event_channel(self.raw.as_ptr()) };
    }
}

/// The fields of an rdmacm event that are used after it is acknowledged.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CmEvent {
    pub(crate) kind: ffi::rdma_cm_event_type::Type,
    pub(crate) status: i32,
    /// For a connect request, the new id (owned by the receiver from then on).
    pub(crate) id: *mut ffi::rdma_cm_id,
    pub(crate) responder_resources: u8,
    pub(crate) initiator_depth: u8,
}

/// rdmacm's name for an event type.
pub(crate) fn event_name(kind: ffi::rdma_cm_event_type::Type) -> String {
    // SAFETY: rdma_event_str returns a static string for any value.
    let text = unsafe { ffi::rdma_event_str(kind) };
    if text.is_null() {
        return format!("event {kind}");
    }
    // SAFETY: non-null, NUL-terminated static string.
    unsafe { std::ffi::CStr::from_ptr(text) }
        .to_string_lossy()
        .into_owned()
}

/// An rdmacm identifier (the RDMA analogue of a socket), owned.
pub(crate) struct CmId {
    raw: NonNull<ffi::rdma_cm_id>,
    channel: Arc<EventChannel>,
}

// SAFETY: see EventChannel; the id is mutated only through rdmacm calls.
unsafe impl Send for CmId {}
// SAFETY: as above.
unsafe impl Sync for CmId {}

impl CmId {
    /// A new reliable-connected (TCP port space) id whose events arrive on `channel`.
    pub(crate) fn new(channel: Arc<EventChannel>) -> Result<Self, (&'static str, i32)> {
        let mut raw: *mut ffi::rdma_cm_id = std::ptr::null_mut();
        // SAFETY: channel is live; `raw` is a valid out-pointer.
        let rc = unsafe {
            ffi::rdma_create_id(
                channel.as_ptr(),
                &mut raw,
                std::ptr::null_mut(),
                ffi::rdma_port_space::RDMA_PS_TCP,
            )
        };
        if rc != 0 {
            return Err(("rdma_create_id", last_errno()));
        }
        let raw = NonNull::new(raw).ok_or(("rdma_create_id", libc::ENOMEM))?;
        Ok(CmId { raw, channel })
    }

    /// Takes ownership of the id a connect request delivered on `channel`.
    ///
    /// # Safety
    /// `raw` must be the id of a connect-request event read from `channel`, not owned by
    /// anything else.
    pub(crate) unsafe fn adopt(raw: NonNull<ffi::rdma_cm_id>, channel: Arc<EventChannel>) -> Self {
        CmId { raw, channel }
    }

    /// Moves the id's events to `channel` (a connection gets its own channel, so its
    /// disconnect events do not land on the listener's).
    pub(crate) fn migrate(
        &mut self,
        channel: Arc<EventChannel>,
    ) -> Result<(), (&'static str, i32)> {
        // SAFETY: both are live; every event of this id on the old channel has been
        // acknowledged (next_event acknowledges before returning), so this does not block.
        let rc = unsafe { ffi::rdma_migrate_id(self.as_ptr(), channel.as_ptr()) };
        if rc != 0 {
            return Err(("rdma_migrate_id", last_errno()));
        }
        self.channel = channel;
        Ok(())
    }

    pub(crate) fn as_ptr(&self) -> *mut ffi::rdma_cm_id {
        self.raw.as_ptr()
    }

    pub(crate) fn channel(&self) -> &Arc<EventChannel> {
        &self.channel
    }

    /// The device context the id is bound to, once its address is resolved or bound.
    pub(crate) fn verbs(&self) -> Option<NonNull<ffi::ibv_context>> {
        // SAFETY: the id is live; reading a pointer field.
        NonNull::new(unsafe { (*self.as_ptr()).verbs })
    }

    /// The remote address of a connected id.
    pub(crate) fn peer_addr(&self) -> Option<SocketAddr> {
        // SAFETY: the id is live; route.addr holds sockaddr storage filled in by rdmacm.
        unsafe {
            let storage = &(*self.as_ptr()).route.addr.dst_addr_union.dst_storage;
            sockaddr_to_std(storage)
        }
    }

    /// The local address of a bound id.
    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        // SAFETY: as for peer_addr.
        unsafe {
            let storage = &(*self.as_ptr()).route.addr.src_addr_union.src_storage;
            sockaddr_to_std(storage)
        }
    }
}

impl Drop for CmId {
    fn drop(&mut self) {
        // SAFETY: the QP (if any) holds an Arc of this id and so was destroyed first; all
        // events were acknowledged. The result cannot be acted on in drop.
        unsafe { ffi::rdma_destroy_id(self.as_ptr()) };
    }
}

/// A protection domain on the device of a CM id.
pub(crate) struct Pd {
    raw: NonNull<ffi::ibv_pd>,
    _id: Arc<CmId>,
}

// SAFETY: verbs objects are thread safe (libibverbs(7)); the PD is never mutated by us.
unsafe impl Send for Pd {}
// SAFETY: as above.
unsafe impl Sync for Pd {}

impl Pd {
    pub(crate) fn new(id: Arc<CmId>) -> Result<Self, (&'static str, i32)> {
        let verbs = id.verbs().ok_or(("ibv_alloc_pd", libc::ENODEV))?;
        // SAFETY: `verbs` is the id's open device context.
        let raw = unsafe { ffi::ibv_alloc_pd(verbs.as_ptr()) };
        let raw = NonNull::new(raw).ok_or(("ibv_alloc_pd", last_errno()))?;
        Ok(Pd { raw, _id: id })
    }

    pub(crate) fn as_ptr(&self) -> *mut ffi::ibv_pd {
        self.raw.as_ptr()
    }

    /// The device context the PD lives on.
    pub(crate) fn context(&self) -> *mut ffi::ibv_context {
        // SAFETY: live PD; reading a pointer field.
        unsafe { (*self.as_ptr()).context }
    }
}

/// The kernel's name of the device behind `context` (e.g. `rxe0`).
pub(crate) fn device_name(context: NonNull<ffi::ibv_context>) -> String {
    // SAFETY: `context` is an open device context; its device pointer is valid while it is.
    let name = unsafe { ffi::ibv_get_device_name((*context.as_ptr()).device) };
    if name.is_null() {
        return String::from("?");
    }
    // SAFETY: non-null NUL-terminated name owned by the device.
    unsafe { std::ffi::CStr::from_ptr(name) }
        .to_string_lossy()
        .into_owned()
}

impl Drop for Pd {
    fn drop(&mut self) {
        // SAFETY: every QP and MR on this PD holds an Arc of it, so none is left.
        unsafe { ffi::ibv_dealloc_pd(self.as_ptr()) };
    }
}

/// A completion channel (the fd that wakes a waiter when a CQ has a completion).
pub(crate) struct CompChannel {
    raw: NonNull<ffi::ibv_comp_channel>,
    _id: Arc<CmId>,
}

// SAFETY: see Pd.
unsafe impl Send for CompChannel {}
// SAFETY: see Pd.
unsafe impl Sync for CompChannel {}

impl CompChannel {
    pub(crate) fn new(id: Arc<CmId>) -> Result<Self, (&'static str, i32)> {
        let verbs = id
            .verbs()
            .ok_or(("ibv_create_comp_channel", libc::ENODEV))?;
        // SAFETY: `verbs` is the id's open device context.
        let raw = unsafe { ffi::ibv_create_comp_channel(verbs.as_ptr()) };
        let raw = NonNull::new(raw).ok_or(("ibv_create_comp_channel", last_errno()))?;
        let channel = CompChannel { raw, _id: id };
        set_nonblocking(channel.fd()).map_err(|errno| ("fcntl(O_NONBLOCK)", errno))?;
        Ok(channel)
    }

    pub(crate) fn fd(&self) -> i32 {
        // SAFETY: live channel owned by self.
        unsafe { (*self.raw.as_ptr()).fd }
    }
}

impl Drop for CompChannel {
    fn drop(&mut self) {
        // SAFETY: the CQ using this channel holds an Arc of it, so it is gone.
        unsafe { ffi::ibv_destroy_comp_channel(self.raw.as_ptr()) };
    }
}

/// A completion queue bound to a completion channel.
pub(crate) struct Cq {
    raw: NonNull<ffi::ibv_cq>,
    channel: Arc<CompChannel>,
}

// SAFETY: see Pd.
unsafe impl Send for Cq {}
// SAFETY: see Pd.
unsafe impl Sync for Cq {}

impl Cq {
    pub(crate) fn new(
        channel: Arc<CompChannel>,
        entries: i32,
    ) -> Result<Self, (&'static str, i32)> {
        // SAFETY: the channel's context is live (the channel holds the id).
        let raw = unsafe {
            ffi::ibv_create_cq(
                (*channel.raw.as_ptr()).context,
                entries,
                std::ptr::null_mut(),
                channel.raw.as_ptr(),
                0,
            )
        };
        let raw = NonNull::new(raw).ok_or(("ibv_create_cq", last_errno()))?;
        Ok(Cq { raw, channel })
    }

    pub(crate) fn as_ptr(&self) -> *mut ffi::ibv_cq {
        self.raw.as_ptr()
    }

    pub(crate) fn channel_fd(&self) -> i32 {
        self.channel.fd()
    }

    /// Asks for a wake-up on the channel at the next completion.
    pub(crate) fn arm(&self) -> Result<(), (&'static str, i32)> {
        // SAFETY: live CQ.
        let rc = unsafe { ffi::ibv_req_notify_cq(self.as_ptr(), 0) };
        if rc != 0 {
            return Err(("ibv_req_notify_cq", rc));
        }
        Ok(())
    }

    /// Consumes pending wake-ups of the channel (each acknowledged at once, so destroying
    /// the CQ never waits for unacked events).
    pub(crate) fn consume_wakeups(&self) -> Result<(), (&'static str, i32)> {
        for _ in 0..super::CQ_DEPTH {
            let mut cq: *mut ffi::ibv_cq = std::ptr::null_mut();
            let mut context: *mut libc::c_void = std::ptr::null_mut();
            // SAFETY: the channel is live and non-blocking; out-pointers are valid.
            let rc =
                unsafe { ffi::ibv_get_cq_event(self.channel.raw.as_ptr(), &mut cq, &mut context) };
            if rc != 0 {
                let errno = last_errno();
                if errno == libc::EAGAIN || errno == libc::EWOULDBLOCK || errno == libc::EINTR {
                    return Ok(());
                }
                return Err(("ibv_get_cq_event", errno));
            }
            // SAFETY: `cq` is the CQ the event was for (ours, the channel's only CQ).
            unsafe { ffi::ibv_ack_cq_events(cq, 1) };
        }
        Ok(())
    }

    /// Moves up to `out.len()` completions into `out`; returns how many.
    pub(crate) fn poll(&self, out: &mut [ffi::ibv_wc]) -> Result<usize, (&'static str, i32)> {
        let capacity = i32::try_from(out.len()).unwrap_or(i32::MAX);
        // SAFETY: live CQ; `out` has room for `capacity` entries.
        let n = unsafe { ffi::ibv_poll_cq(self.as_ptr(), capacity, out.as_mut_ptr()) };
        usize::try_from(n).map_err(|_| ("ibv_poll_cq", libc::EIO))
    }
}

impl Drop for Cq {
    fn drop(&mut self) {
        // SAFETY: the QP using this CQ holds an Arc of it, so it is gone; every channel
        // event was acknowledged in consume_wakeups.
        unsafe { ffi::ibv_destroy_cq(self.as_ptr()) };
    }
}

/// The RC queue pair rdmacm created on a CM id.
pub(crate) struct Qp {
    id: Arc<CmId>,
    _pd: Arc<Pd>,
    _cq: Arc<Cq>,
}

impl Qp {
    pub(crate) fn new(
        id: Arc<CmId>,
        pd: Arc<Pd>,
        cq: Arc<Cq>,
        cap: ffi::ibv_qp_cap,
    ) -> Result<Self, (&'static str, i32)> {
        // SAFETY: ibv_qp_init_attr is a plain C struct for which all-zero is valid.
        let mut attr: ffi::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        attr.send_cq = cq.as_ptr();
        attr.recv_cq = cq.as_ptr();
        attr.cap = cap;
        attr.qp_type = ffi::ibv_qp_type::IBV_QPT_RC;
        attr.sq_sig_all = 0;
        // SAFETY: id, PD and CQ are live and on the same device; attr is initialised.
        let rc = unsafe { ffi::rdma_create_qp(id.as_ptr(), pd.as_ptr(), &mut attr) };
        if rc != 0 {
            return Err(("rdma_create_qp", last_errno()));
        }
        Ok(Qp {
            id,
            _pd: pd,
            _cq: cq,
        })
    }

    pub(crate) fn as_ptr(&self) -> *mut ffi::ibv_qp {
        // SAFETY: the id is live and rdma_create_qp set its qp.
        unsafe { (*self.id.as_ptr()).qp }
    }

    /// Moves the QP to the error state: every outstanding work request completes with a
    /// flush error, after which the device touches none of their memory.
    pub(crate) fn fail(&self) -> Result<(), (&'static str, i32)> {
        // SAFETY: ibv_qp_attr is a plain C struct for which all-zero is valid.
        let mut attr: ffi::ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = ffi::ibv_qp_state::IBV_QPS_ERR;
        let mask = i32::try_from(ffi::ibv_qp_attr_mask::IBV_QP_STATE.0).unwrap_or(1);
        // SAFETY: live QP; only the state is modified.
        let rc = unsafe { ffi::ibv_modify_qp(self.as_ptr(), &mut attr, mask) };
        if rc != 0 {
            return Err(("ibv_modify_qp(ERR)", rc));
        }
        Ok(())
    }
}

impl Drop for Qp {
    fn drop(&mut self) {
        // SAFETY: the id is live (held by self) and has this QP.
        unsafe { ffi::rdma_destroy_qp(self.id.as_ptr()) };
    }
}

/// A memory registration; the memory it covers must outlive it (its owners ensure that:
/// `MemoryRegion` borrows the buffer, `OwnedBuffer` declares it after the registration).
pub(crate) struct Mr {
    raw: NonNull<ffi::ibv_mr>,
    pd: Arc<Pd>,
}

// SAFETY: see Pd.
unsafe impl Send for Mr {}
// SAFETY: see Pd.
unsafe impl Sync for Mr {}

impl Mr {
    /// Registers `len` bytes at `addr` for local write and remote read and write.
    ///
    /// # Safety
    /// The memory must stay allocated until the returned value is dropped.
    pub(crate) unsafe fn new(
        pd: Arc<Pd>,
        addr: *mut u8,
        len: usize,
    ) -> Result<Self, (&'static str, i32)> {
        let access = ffi::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE
            | ffi::ibv_access_flags::IBV_ACCESS_REMOTE_WRITE
            | ffi::ibv_access_flags::IBV_ACCESS_REMOTE_READ;
        let access = i32::try_from(access.0).unwrap_or(0);
        // SAFETY: the PD is live; the caller keeps the memory allocated while registered.
        let raw = unsafe { ffi::ibv_reg_mr(pd.as_ptr(), addr.cast(), len, access) };
        let raw = NonNull::new(raw).ok_or(("ibv_reg_mr", last_errno()))?;
        Ok(Mr { raw, pd })
    }

    pub(crate) fn lkey(&self) -> u32 {
        // SAFETY: live registration.
        unsafe { (*self.raw.as_ptr()).lkey }
    }

    pub(crate) fn rkey(&self) -> u32 {
        // SAFETY: live registration.
        unsafe { (*self.raw.as_ptr()).rkey }
    }

    pub(crate) fn pd(&self) -> &Arc<Pd> {
        &self.pd
    }
}

impl Drop for Mr {
    fn drop(&mut self) {
        // SAFETY: live registration, deregistered once; afterwards the device no longer
        // accesses the memory, which its owner frees only after this.
        unsafe { ffi::ibv_dereg_mr(self.raw.as_ptr()) };
    }
}

/// A heap buffer owned together with its registration (internal message buffers).
pub(crate) struct OwnedBuffer {
    // Declared first: dropped (deregistered) before the memory is freed.
    mr: Mr,
    memory: Box<[u8]>,
}

impl OwnedBuffer {
    pub(crate) fn new(pd: Arc<Pd>, len: usize) -> Result<Self, (&'static str, i32)> {
        let mut memory = vec![0u8; len].into_boxed_slice();
        // SAFETY: `memory` moves into the returned value beside `mr`, which is dropped
        // first; moving a Box does not move its heap allocation.
        let mr = unsafe { Mr::new(pd, memory.as_mut_ptr(), memory.len())? };
        Ok(OwnedBuffer { mr, memory })
    }

    pub(crate) fn lkey(&self) -> u32 {
        self.mr.lkey()
    }

    pub(crate) fn addr(&self, offset: usize) -> u64 {
        assert!(offset <= self.memory.len(), "offset inside the buffer");
        self.memory.as_ptr() as u64 + offset as u64
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.memory
    }

    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.memory
    }
}

/// Waits until one of `fds` is readable or `deadline` passes. Returns the index of a
/// readable fd, or `None` at the deadline.
pub(crate) fn poll_fds(fds: &[i32], deadline: Instant) -> Result<Option<usize>, i32> {
    const MAX_FDS: usize = 2;
    assert!(fds.len() <= MAX_FDS, "at most {MAX_FDS} fds are polled");
    let mut pollfds = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; MAX_FDS];
    for (slot, fd) in pollfds.iter_mut().zip(fds) {
        slot.fd = *fd;
        slot.events = libc::POLLIN;
    }
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        let left_ms = crate::event::poll_timeout_ms(left);
        // SAFETY: `pollfds` holds fds.len() initialised entries.
        let n = unsafe { libc::poll(pollfds.as_mut_ptr(), fds.len() as libc::nfds_t, left_ms) };
        if n < 0 {
            let errno = last_errno();
            if errno == libc::EINTR {
                continue;
            }
            return Err(errno);
        }
        if let Some(ready) = pollfds[..fds.len()].iter().position(|p| p.revents != 0) {
            return Ok(Some(ready));
        }
    }
}

fn set_nonblocking(fd: i32) -> Result<(), i32> {
    // SAFETY: fcntl on an fd we own; F_GETFL takes no argument.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(last_errno());
    }
    // SAFETY: as above, setting flags.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(last_errno());
    }
    Ok(())
}

/// A socket address in the C form rdmacm takes.
pub(crate) fn std_to_sockaddr(addr: SocketAddr) -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain data for which all-zero is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: as above.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
        }
    }
    storage
}

/// The Rust form of a C socket address, when it is IPv4 or IPv6.
pub(crate) fn sockaddr_to_std(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    let base = (storage as *const libc::sockaddr_storage).cast::<u8>();
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin: libc::sockaddr_in = unsafe { std::ptr::read(base.cast()) };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6: libc::sockaddr_in6 = unsafe { std::ptr::read(base.cast()) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_round_trip_through_the_c_form() {
        let addrs: [SocketAddr; 3] = [
            "198.18.0.1:7471".parse().expect("literal"),
            "0.0.0.0:0".parse().expect("literal"),
            "[fe80::1%3]:65535".parse().expect("literal"),
        ];
        for addr in addrs {
            assert_eq!(sockaddr_to_std(&std_to_sockaddr(addr)), Some(addr));
        }
    }
}
