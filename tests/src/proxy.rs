//! A loopback TCP proxy that can cut every open connection: real transport failures between
//! screamer and the emulator, for the retry paths.

use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

/// Forwards connections to `upstream` until dropped.
pub struct ChaosProxy {
    host: String,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    accept: JoinHandle<()>,
}

impl ChaosProxy {
    pub async fn start(upstream: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let host = listener.local_addr()?.to_string();
        let connections: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let upstream = upstream.to_owned();
        let accept = tokio::spawn({
            let connections = Arc::clone(&connections);
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    let upstream = upstream.clone();
                    let task = tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(&upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    let mut open = connections.lock().expect("proxy lock");
                    open.retain(|c| !c.is_finished());
                    open.push(task.abort_handle());
                }
            }
        });
        Ok(Self {
            host,
            connections,
            accept,
        })
    }

    /// `host:port` to connect to instead of the upstream.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Drops every open connection; returns how many there were.
    pub fn cut(&self) -> usize {
        let open = std::mem::take(&mut *self.connections.lock().expect("proxy lock"));
        let live = open.iter().filter(|c| !c.is_finished()).count();
        for c in open {
            c.abort();
        }
        live
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
