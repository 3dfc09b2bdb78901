//! RDMA: verbs and rdmacm through rdma-sys (being written).
