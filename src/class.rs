//! How the reconciler treats a failure: tried again with backoff, or given up on until
//! the user changes the manifest. Every error type that crosses one of the reconciler's
//! seams (images, runtime, network, volumes) says which it is, so the choice is made
//! where the cause is known, not guessed from a message.

/// The two classes of failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Another try may succeed without any edit (a registry down, a port taken, a
    /// busy kernel object): state `pending`, retried with backoff.
    Transient,
    /// Only an edit of the manifest can help (an unknown user, a command missing from
    /// the image, an image for another platform): state `failed` until the spec changes.
    Permanent,
}

/// An error that knows its class.
pub trait Classify {
    fn class(&self) -> ErrorClass;
}
