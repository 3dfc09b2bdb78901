//! nacre-io: objects on a target's local storage, moved with io_uring.
