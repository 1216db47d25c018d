//! The listeners of `--listen`, `--grpc-listen` and `--admin-listen`: a TCP
//! address, or a unix domain socket (`unix:/path`) the server creates with
//! `--socket-mode`, in place of a stale one a crash left behind, and removes at
//! exit.

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};

use crate::config::Listen;

/// A bound listener, not yet served.
pub enum Listener {
    /// On a TCP address.
    Tcp(TcpListener),
    /// On a unix domain socket.
    Unix(UnixListener),
}

/// A listener bound, where it listens (a TCP port 0 resolved), and the socket
/// file to remove at exit.
pub struct Bound {
    /// The listener, for `serve` or `serve_grpc`.
    pub listener: Listener,
    /// Where it listens.
    pub address: Listen,
    /// For a unix socket, its file.
    pub file: Option<SocketFile>,
}

/// A socket file the server created: removed when dropped, unless another file
/// has taken its path since.
pub struct SocketFile {
    path: PathBuf,
    /// The file's device and inode.
    id: (u64, u64),
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|metadata| (metadata.dev(), metadata.ino()) == self.id);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// How long a socket found at the path has to accept a connection before the
/// server takes it for another process's (busy, its backlog full).
const IN_USE_TIME: Duration = Duration::from_secs(1);

/// Binds `listen`; a unix socket gets `mode`.
///
/// # Errors
///
/// One line: the address taken, a path whose directory is missing or whose file
/// is not a stale socket, a mode that cannot be set.
pub async fn bind(listen: &Listen, mode: u32) -> Result<Bound, String> {
    match listen {
        Listen::Tcp(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|error| format!("cannot listen on {addr}: {error}"))?;
            let addr = listener
                .local_addr()
                .map_err(|error| format!("no local address: {error}"))?;
            Ok(Bound {
                listener: Listener::Tcp(listener),
                address: Listen::Tcp(addr),
                file: None,
            })
        }
        Listen::Unix(path) => {
            let (listener, file) = bind_unix(path, mode)
                .await
                .map_err(|why| format!("cannot listen on {listen}: {why}"))?;
            Ok(Bound {
                listener: Listener::Unix(listener),
                address: listen.clone(),
                file: Some(file),
            })
        }
    }
}

/// Binds a unix socket at `path` with `mode`, in place of a stale one.
async fn bind_unix(path: &Path, mode: u32) -> Result<(UnixListener, SocketFile), String> {
    directory_of(path)?;
    clear_stale(path).await?;
    let listener = UnixListener::bind(path).map_err(|error| error.to_string())?;
    let id = match std::fs::symlink_metadata(path) {
        Ok(metadata) => (metadata.dev(), metadata.ino()),
        Err(error) => {
            let _ = std::fs::remove_file(path);
            return Err(error.to_string());
        }
    };
    let file = SocketFile {
        path: path.to_owned(),
        id,
    };
    // On failure `file` is dropped: the socket goes.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|error| format!("cannot set its mode {mode:04o}: {error}"))?;
    Ok((listener, file))
}

/// Refuses a path whose directory is missing or not a directory.
fn directory_of(path: &Path) -> Result<(), String> {
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let shown = directory.display();
    match std::fs::metadata(directory) {
        Ok(metadata) if metadata.is_dir() => Ok(()),
        Ok(_) => Err(format!("{shown} is not a directory")),
        Err(error) if error.kind() == ErrorKind::NotFound => Err(format!("no directory {shown}")),
        Err(error) => Err(format!("{shown}: {error}")),
    }
}

/// Makes way at `path`: nothing there, or a socket nobody listens on (a crash
/// left it), removed. Anything else stays as it is.
async fn clear_stale(path: &Path) -> Result<(), String> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error.to_string()),
    };
    if !metadata.file_type().is_socket() {
        return Err("the path exists and is not a socket (left as it is)".to_owned());
    }
    match tokio::time::timeout(IN_USE_TIME, tokio::net::UnixStream::connect(path)).await {
        Ok(Err(error)) if error.kind() == ErrorKind::ConnectionRefused => {
            tracing::info!("removing the stale socket {}", path.display());
            std::fs::remove_file(path)
                .map_err(|error| format!("cannot remove the stale socket: {error}"))
        }
        Ok(Err(error)) => Err(error.to_string()),
        Ok(Ok(_)) | Err(_) => Err("already in use: another process listens on it".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_socket_file_is_removed_only_while_it_is_ours() {
        let dir =
            std::env::temp_dir().join(format!("composio-auth-sockets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("auth.sock");
        let listen = Listen::Unix(path.clone());
        let bound = bind(&listen, 0o600).await.unwrap();
        let metadata = std::fs::metadata(&path).unwrap();
        assert_eq!(metadata.permissions().mode() & 0o777, 0o600);
        drop(bound);
        assert!(!path.exists());

        // Replaced by another file since: that one stays.
        let bound = bind(&listen, 0o600).await.unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "not ours").unwrap();
        drop(bound);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not ours");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
