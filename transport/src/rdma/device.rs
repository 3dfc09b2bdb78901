//! RDMA devices on this machine, and whether one of them reaches a peer.

use std::ffi::CStr;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdma_sys as ffi;

use super::error::{Op, RdmaError, last_errno};
use super::sys::{CmId, EventChannel, std_to_sockaddr};

/// One RDMA device (an HCA, or a software device such as Soft-RoCE `rxe0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The kernel's name for it, e.g. `mlx5_0` or `rxe0`.
    pub name: String,
    /// Its ports, numbered from 1.
    pub ports: Vec<PortInfo>,
}

/// The state of one port of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    /// Port number (from 1).
    pub number: u8,
    /// True when the port can carry traffic.
    pub active: bool,
    /// libibverbs' name for the state (`active`, `down`, `init`, ...).
    pub state: String,
}

/// Every RDMA device on this machine with its ports. A machine whose kernel has no RDMA
/// support gives an empty list, as does one with no device.
pub fn devices() -> Result<Vec<DeviceInfo>, RdmaError> {
    let mut count: i32 = 0;
    // SAFETY: `count` is a valid out-pointer; the list is freed below.
    let list = unsafe { ffi::ibv_get_device_list(&mut count) };
    if list.is_null() {
        let errno = last_errno();
        if errno == libc::ENOSYS || errno == libc::ENODEV || errno == libc::ENOENT {
            return Ok(Vec::new());
        }
        return Err(RdmaError::Device {
            op: Op::Devices,
            call: "ibv_get_device_list",
            errno,
        });
    }
    let count = usize::try_from(count).unwrap_or(0);
    let mut found = Vec::with_capacity(count);
    for index in 0..count {
        // SAFETY: the list holds `count` device pointers.
        let device = unsafe { *list.add(index) };
        if device.is_null() {
            break;
        }
        found.push(describe(device));
    }
    // SAFETY: the list came from ibv_get_device_list and is freed once; no device pointer
    // from it is kept.
    unsafe { ffi::ibv_free_device_list(list) };
    found.into_iter().collect()
}

fn describe(device: *mut ffi::ibv_device) -> Result<DeviceInfo, RdmaError> {
    // SAFETY: `device` is an entry of a live device list.
    let name_ptr = unsafe { ffi::ibv_get_device_name(device) };
    let name = if name_ptr.is_null() {
        String::from("?")
    } else {
        // SAFETY: a NUL-terminated name owned by the device list.
        unsafe { CStr::from_ptr(name_ptr) }
            .to_string_lossy()
            .into_owned()
    };
    // SAFETY: `device` is live; the context is closed below.
    let context = unsafe { ffi::ibv_open_device(device) };
    if context.is_null() {
        return Err(RdmaError::Device {
            op: Op::Devices,
            call: "ibv_open_device",
            errno: last_errno(),
        });
    }
    let ports = query_ports(context);
    // SAFETY: opened above, closed once.
    unsafe { ffi::ibv_close_device(context) };
    Ok(DeviceInfo {
        name,
        ports: ports?,
    })
}

fn query_ports(context: *mut ffi::ibv_context) -> Result<Vec<PortInfo>, RdmaError> {
    // SAFETY: plain C struct; all-zero is valid.
    let mut device_attr: ffi::ibv_device_attr = unsafe { std::mem::zeroed() };
    // SAFETY: live context, valid out-pointer.
    let rc = unsafe { ffi::ibv_query_device(context, &mut device_attr) };
    if rc != 0 {
        return Err(RdmaError::Device {
            op: Op::Devices,
            call: "ibv_query_device",
            errno: rc,
        });
    }
    let mut ports = Vec::with_capacity(usize::from(device_attr.phys_port_cnt));
    for number in 1..=device_attr.phys_port_cnt {
        // SAFETY: plain C struct; all-zero is valid.
        let mut port_attr: ffi::ibv_port_attr = unsafe { std::mem::zeroed() };
        // SAFETY: live context, port number within phys_port_cnt, valid out-pointer.
        let rc = unsafe { ffi::___ibv_query_port(context, number, &mut port_attr) };
        if rc != 0 {
            return Err(RdmaError::Device {
                op: Op::Devices,
                call: "ibv_query_port",
                errno: rc,
            });
        }
        // SAFETY: returns a static string for any state.
        let text = unsafe { ffi::ibv_port_state_str(port_attr.state) };
        let state = if text.is_null() {
            format!("state {}", port_attr.state)
        } else {
            // SAFETY: non-null static NUL-terminated string.
            unsafe { CStr::from_ptr(text) }
                .to_string_lossy()
                .into_owned()
        };
        ports.push(PortInfo {
            number,
            active: port_attr.state == ffi::ibv_port_state::IBV_PORT_ACTIVE,
            state,
        });
    }
    Ok(ports)
}

/// True when an RDMA device on this machine resolves an address and a route to `addr`
/// within `timeout` — the test for choosing RDMA over TCP for a peer. Never errs: any
/// failure (no device, no kernel support, unreachable) is `false`.
pub fn can_reach(addr: SocketAddr, timeout: Duration) -> bool {
    resolve(addr, timeout).is_ok()
}

/// Resolves address and route of `peer` on `id`, waiting on its channel until `deadline`.
pub(crate) fn resolve_on(
    id: &CmId,
    op: Op,
    peer: SocketAddr,
    deadline: Instant,
) -> Result<(), RdmaError> {
    let call_err = |(call, errno): (&'static str, i32)| RdmaError::Call {
        op,
        peer,
        call,
        errno,
    };
    let mut dst = std_to_sockaddr(peer);
    // SAFETY: live id; `dst` holds a valid sockaddr for the call's duration (rdmacm copies it).
    let rc = unsafe {
        ffi::rdma_resolve_addr(
            id.as_ptr(),
            std::ptr::null_mut(),
            (&mut dst as *mut libc::sockaddr_storage).cast(),
            ms_until(deadline),
        )
    };
    if rc != 0 {
        return Err(call_err(("rdma_resolve_addr", last_errno())));
    }
    expect_event(
        id,
        op,
        peer,
        deadline,
        ffi::rdma_cm_event_type::RDMA_CM_EVENT_ADDR_RESOLVED,
    )?;
    // SAFETY: live id whose address is resolved.
    let rc = unsafe { ffi::rdma_resolve_route(id.as_ptr(), ms_until(deadline)) };
    if rc != 0 {
        return Err(call_err(("rdma_resolve_route", last_errno())));
    }
    expect_event(
        id,
        op,
        peer,
        deadline,
        ffi::rdma_cm_event_type::RDMA_CM_EVENT_ROUTE_RESOLVED,
    )
}

/// Waits for one event on the id's channel and checks it is `wanted`.
pub(crate) fn expect_event(
    id: &CmId,
    op: Op,
    peer: SocketAddr,
    deadline: Instant,
    wanted: ffi::rdma_cm_event_type::Type,
) -> Result<(), RdmaError> {
    let started = Instant::now();
    let event = id
        .channel()
        .next_event(deadline)
        .map_err(|(call, errno)| RdmaError::Call {
            op,
            peer,
            call,
            errno,
        })?;
    match event {
        None => Err(RdmaError::Timeout {
            op,
            peer,
            timeout_ms: u64::try_from(deadline.saturating_duration_since(started).as_millis())
                .unwrap_or(u64::MAX),
        }),
        Some(event) if event.kind == wanted && event.status == 0 => Ok(()),
        Some(event) => Err(RdmaError::CmEvent {
            op,
            peer,
            event: super::sys::event_name(event.kind),
            status: event.status,
        }),
    }
}

fn resolve(addr: SocketAddr, timeout: Duration) -> Result<(), RdmaError> {
    let deadline = Instant::now() + timeout;
    let call_err = |(call, errno): (&'static str, i32)| RdmaError::Call {
        op: Op::Resolve,
        peer: addr,
        call,
        errno,
    };
    let channel = Arc::new(EventChannel::new().map_err(call_err)?);
    let id = CmId::new(channel).map_err(call_err)?;
    resolve_on(&id, Op::Resolve, addr, deadline)?;
    if id.verbs().is_none() {
        return Err(call_err(("rdma_resolve_route", libc::ENODEV)));
    }
    Ok(())
}

/// Milliseconds left until `deadline`, as rdmacm's timeouts take them (at least 1).
pub(crate) fn ms_until(deadline: Instant) -> i32 {
    let left = deadline
        .saturating_duration_since(Instant::now())
        .as_millis();
    i32::try_from(left).unwrap_or(i32::MAX).max(1)
}
