//! Errors the MVCC layer returns, each carrying etcd's gRPC code and exact message.

/// gRPC status codes used by etcd errors (the numeric values are gRPC's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum GrpcCode {
    InvalidArgument = 3,
    NotFound = 5,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    OutOfRange = 11,
}

/// An error a client sees. Messages are etcd's, byte for byte: clients match on them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MvccError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// A request that decodes but cannot be served (an unknown enum value, a missing
    /// oneof). etcd answers these with InvalidArgument too.
    #[error("etcdserver: {0}")]
    InvalidRequest(String),
}

impl MvccError {
    pub fn code(&self) -> GrpcCode {
        match self {
            MvccError::Compacted | MvccError::FutureRevision | MvccError::LeaseTtlTooLarge => {
                GrpcCode::OutOfRange
            }
            MvccError::LeaseExists => GrpcCode::FailedPrecondition,
            MvccError::LeaseNotFound => GrpcCode::NotFound,
            MvccError::NoSpace => GrpcCode::ResourceExhausted,
            MvccError::EmptyKey
            | MvccError::DuplicateKey
            | MvccError::TooManyOps
            | MvccError::RequestTooLarge
            | MvccError::KeyNotFound
            | MvccError::ValueProvided
            | MvccError::LeaseProvided
            | MvccError::InvalidRequest(_) => GrpcCode::InvalidArgument,
        }
    }
}

/// A failure of the disk engine. Storage errors are not client errors: the caller
/// (the Raft state machine) treats them as fatal for this member.
#[derive(Debug, thiserror::Error)]
#[error("storage: {0}")]
pub struct StorageError(pub String);

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StorageError {
            fn from(e: $t) -> Self { StorageError(e.to_string()) }
        }
    )*};
}
storage_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
    std::io::Error,
    prost::DecodeError
);
