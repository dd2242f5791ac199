//! The proxy's listening socket, bound by taphook at start-up and handed
//! to Pingora.
//!
//! Pingora binds its listeners inside its service thread, after the rest
//! of the process is up, and a failed bind there panics that thread while
//! the admin listener keeps answering. Binding the socket ourselves, first
//! thing, makes a taken port a clear start-up error (`cannot listen on
//! ...`), and no other process can take the port between a check and
//! Pingora's bind. Pingora takes the socket over through its table of
//! inherited sockets (the one its zero-downtime upgrade uses).

use std::net::{SocketAddr, TcpListener};
use std::os::fd::IntoRawFd;
use std::sync::Mutex;

use async_trait::async_trait;
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::Service;

/// A listening socket other processes may bind too (SO_REUSEPORT): the
/// admin listener, which the process being upgraded holds until it exits.
/// Unless `taking_over`, the address must be free first (a plain bind is
/// tried and released), so a port another process holds is a start-up
/// error as before, not a port silently shared with it.
pub fn bind_shared(addr: SocketAddr, taking_over: bool) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    if !taking_over {
        drop(TcpListener::bind(addr)?);
    }
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// A TCP socket bound and listening, not yet served.
pub struct BoundSocket {
    addr: SocketAddr,
    listener: TcpListener,
}

impl BoundSocket {
    pub fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        // Pingora's runtime accepts on it: a blocking accept would stall
        // a worker thread.
        listener.set_nonblocking(true)?;
        Ok(BoundSocket { addr, listener })
    }

    /// `service` serves this socket; it must listen on the same address
    /// (`add_tcp(&addr.to_string())`).
    pub fn serve<S: Service>(self, service: S) -> Bound<S> {
        Bound {
            inner: service,
            addr: self.addr.to_string(),
            listener: Mutex::new(Some(self.listener)),
        }
    }
}

/// A Pingora listening service whose TCP listener is already bound.
pub struct Bound<S> {
    inner: S,
    addr: String,
    listener: Mutex<Option<TcpListener>>,
}

impl<S> Bound<S> {
    /// Puts our socket into the server's table of inherited sockets,
    /// unless an upgrade already brought one for the address. The server
    /// always passes its table; without one, the socket is closed and
    /// Pingora binds the address itself.
    fn hand_over(&self, fds: Option<&ListenFds>) {
        let ours = self
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let (Some(listener), Some(table)) = (ours, fds) {
            let mut table = table.lock();
            if table.get(&self.addr).is_none() {
                table.add(self.addr.clone(), listener.into_raw_fd());
            }
        }
    }
}

#[async_trait]
impl<S: Service> Service for Bound<S> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        self.hand_over(fds.as_ref());
        self.inner
            .start_service(fds, shutdown, listeners_per_fd)
            .await
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        self.inner.threads()
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        self.inner.listen_addresses()
    }
}

#[cfg(test)]
mod tests {
    use super::bind_shared;

    #[test]
    fn the_admin_port_is_shared_only_when_taking_over() {
        let first = bind_shared("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let addr = first.local_addr().unwrap();
        // Another taphook starting on the same port: refused, as before.
        assert!(bind_shared(addr, false).is_err());
        // The process taking over from `first` shares it.
        assert!(bind_shared(addr, true).is_ok());
    }
}
