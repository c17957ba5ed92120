//! A TCP tap between the gateway and a host: counts the connections the host is offered, and can
//! swallow traffic or cut every connection, to play a host that dies mid-call.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Tap {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    swallow: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Tap {
    /// Listens on `listen` (port 0 for any) and forwards every connection to `target`.
    pub fn start(listen: &str, target: SocketAddr) -> Tap {
        let listener = TcpListener::bind(listen).unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let swallow = Arc::new(AtomicBool::new(false));
        let streams: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s, st, stp) = (
            accepted.clone(),
            swallow.clone(),
            streams.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            while !stp.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                a.fetch_add(1, Ordering::SeqCst);
                client.set_nonblocking(false).unwrap();
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                st.lock()
                    .unwrap()
                    .extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                let up = (
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    s.clone(),
                );
                std::thread::spawn(move || copy(up.0, up.1, Some(up.2)));
                std::thread::spawn(move || copy(server, client, None));
            }
        });
        Tap {
            addr,
            accepted,
            swallow,
            streams,
            stop,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// From now on, bytes towards the host are dropped (calls get no reply).
    pub fn swallow(&self) {
        self.swallow.store(true, Ordering::SeqCst);
    }

    /// Cuts every connection in both directions.
    pub fn cut_all(&self) {
        for s in self.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut_all();
    }
}

/// A stream whose writing half can be closed.
trait HalfClose: Read + Write {
    fn close_write(&self);
}

impl HalfClose for TcpStream {
    fn close_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

impl HalfClose for std::os::unix::net::UnixStream {
    fn close_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

fn copy<S: HalfClose>(mut from: S, mut to: S, swallow: Option<Arc<AtomicBool>>) {
    let mut buf = [0u8; 65536];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if swallow.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)) {
            continue;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    to.close_write();
}

/// A UNIX-socket tap between a host agent and libvirtd: counts the connections libvirtd is
/// offered (the host-side observation of "no connection").
pub struct UnixTap {
    pub path: std::path::PathBuf,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl UnixTap {
    /// Listens at `path` and forwards every connection to the socket at `target`.
    pub fn start(path: &std::path::Path, target: &std::path::Path) -> UnixTap {
        use std::os::unix::net::{UnixListener, UnixStream};
        let listener = UnixListener::bind(path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, stp, target) = (accepted.clone(), stop.clone(), target.to_path_buf());
        std::thread::spawn(move || {
            while !stp.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                a.fetch_add(1, Ordering::SeqCst);
                client.set_nonblocking(false).unwrap();
                let Ok(server) = UnixStream::connect(&target) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || copy(c2, s2, None));
                std::thread::spawn(move || copy(server, client, None));
            }
        });
        UnixTap {
            path: path.to_path_buf(),
            accepted,
            stop,
        }
    }

    /// Connections libvirtd was offered so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for UnixTap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
