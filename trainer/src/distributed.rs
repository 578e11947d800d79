//! Data-parallel training: one process per GPU (or per CPU worker), each training on its
//! own share of every batch, gradients summed over the processes and averaged before each
//! optimiser step, so every process applies the same update to the same weights.
//!
//! The processes find each other the way torchrun's do: `RANK`, `WORLD_SIZE`,
//! `LOCAL_RANK`, `MASTER_ADDR` and `MASTER_PORT` in the environment ([`World`]). Rank 0
//! listens on `MASTER_ADDR:MASTER_PORT` and every other rank connects to it
//! ([`Rendezvous`]). What runs over that connection depends on the device:
//! - on CUDA devices the rendezvous carries only NCCL's unique id, and the gradients go
//!   through NCCL (`NcclSync`, behind the `cuda` feature): NVLink/PCIe within a machine,
//!   NCCL's network transport (sockets or InfiniBand) between machines;
//! - on the CPU the gradients themselves go through the rendezvous sockets
//!   ([`TcpSync`], a star through rank 0), which is what lets the whole protocol run and
//!   be tested on a machine without a GPU.
//!
//! Both are one trait, [`GradientSync`]; [`Single`] is the no-op of a one-process run.
//! The design trade-off: every rank reads the whole global batch from the corpus and keeps
//! its own share (`shard`), so the data position, resuming and bad-line accounting stay
//! those of a single process; reading JSONL is cheap beside a training step.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};

use crate::{Result, TrainError};

/// How long ranks wait for each other at the rendezvous before giving up.
pub const RENDEZVOUS_TIMEOUT: Duration = Duration::from_secs(300);

/// This process's place among the training processes (torchrun's variables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct World {
    /// Global rank, 0..world_size; rank 0 writes checkpoints and metrics.
    pub rank: usize,
    /// Number of processes over all machines.
    pub world_size: usize,
    /// Rank on this machine: the GPU this process uses (`cuda:LOCAL_RANK`).
    pub local_rank: usize,
    /// Host of rank 0's rendezvous.
    pub master_addr: String,
    /// Port of rank 0's rendezvous.
    pub master_port: u16,
}

impl World {
    /// One process, nothing to synchronise.
    pub fn single() -> Self {
        Self {
            rank: 0,
            world_size: 1,
            local_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: 0,
        }
    }

    /// Reads `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR` and `MASTER_PORT`; a single
    /// process when `WORLD_SIZE` is unset or 1.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// [`World::from_env`] over any source of variables.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let num = |k: &str| -> Result<Option<usize>> {
            var(k)
                .filter(|v| !v.trim().is_empty())
                .map(|v| {
                    v.trim().parse::<usize>().map_err(|_| {
                        TrainError::Config(format!("{k}={v:?} is not a non-negative integer"))
                    })
                })
                .transpose()
        };
        let world_size = num("WORLD_SIZE")?.unwrap_or(1);
        if world_size <= 1 {
            return Ok(Self::single());
        }
        let rank = num("RANK")?.ok_or_else(|| {
            TrainError::Config(format!("WORLD_SIZE={world_size} but RANK is not set"))
        })?;
        if rank >= world_size {
            return Err(TrainError::Config(format!(
                "RANK={rank} is out of range for WORLD_SIZE={world_size} (0..{})",
                world_size - 1
            )));
        }
        let local_rank = num("LOCAL_RANK")?.unwrap_or(rank);
        let master_addr = var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let master_port = match var("MASTER_PORT") {
            Some(p) => p
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| {
                    TrainError::Config(format!("MASTER_PORT={p:?} is not a port number"))
                })?,
            None => {
                return Err(TrainError::Config(format!(
                    "WORLD_SIZE={world_size} but MASTER_PORT is not set (rank 0 listens there)"
                )))
            }
        };
        Ok(Self {
            rank,
            world_size,
            local_rank,
            master_addr,
            master_port,
        })
    }

    /// Whether this run has more than one process.
    pub fn is_distributed(&self) -> bool {
        self.world_size > 1
    }

    /// Whether this process writes checkpoints, metrics and the summary.
    pub fn is_writer(&self) -> bool {
        self.rank == 0
    }
}

/// Sums tensors over all training processes. Every rank calls the same methods in the
/// same order with tensors of the same shape (the training loop guarantees it).
pub trait GradientSync {
    /// This process's rank.
    fn rank(&self) -> usize;
    /// Number of processes.
    fn world_size(&self) -> usize;
    /// The element-wise sum of `values` (f32) over all ranks, on every rank.
    fn all_reduce_sum(&mut self, values: &Tensor) -> Result<Tensor>;
    /// Rank 0's `values` (f32), on every rank.
    fn broadcast(&mut self, values: &Tensor) -> Result<Tensor>;
}

/// The one-process "group": sums and broadcasts are the identity.
#[derive(Debug, Default, Clone, Copy)]
pub struct Single;

impl GradientSync for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&mut self, values: &Tensor) -> Result<Tensor> {
        Ok(values.clone())
    }
    fn broadcast(&mut self, values: &Tensor) -> Result<Tensor> {
        Ok(values.clone())
    }
}

/// Opens the group this process belongs to: [`Single`] for one process, NCCL on a CUDA
/// device, TCP through rank 0 on the CPU.
pub fn open_sync(world: &World, device: &Device) -> Result<Box<dyn GradientSync>> {
    if !world.is_distributed() {
        return Ok(Box::new(Single));
    }
    let rv = Rendezvous::connect(world, RENDEZVOUS_TIMEOUT)?;
    match device {
        Device::Cpu => Ok(Box::new(TcpSync::new(rv))),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => Ok(Box::new(nccl::NcclSync::new(rv, dev)?)),
        other => Err(TrainError::Config(format!(
            "data-parallel training runs on CUDA GPUs or the CPU, not {other:?}"
        ))),
    }
}

// ---------------------------------------------------------------------------------------
// Rendezvous

const MAGIC: &[u8; 8] = b"PRIPRDV1";

/// The TCP connections between rank 0 and every other rank.
#[derive(Debug)]
pub struct Rendezvous {
    rank: usize,
    world_size: usize,
    /// Rank 0: the connection to rank i at index i - 1. Others: the one to rank 0.
    peers: Vec<TcpStream>,
}

fn rdv_err(world: &World, what: impl std::fmt::Display) -> TrainError {
    TrainError::Config(format!(
        "rendezvous at {}:{} (rank {} of {}): {what}",
        world.master_addr, world.master_port, world.rank, world.world_size
    ))
}

impl Rendezvous {
    /// Rank 0 listens on `MASTER_PORT` (all interfaces) and waits for the others; every
    /// other rank connects to `MASTER_ADDR:MASTER_PORT`, retrying until rank 0 is up.
    /// Each says its rank and the world size, and rank 0 checks that they agree. Gives up
    /// after `timeout` with the ranks still missing.
    pub fn connect(world: &World, timeout: Duration) -> Result<Self> {
        let deadline = Instant::now() + timeout;
        if world.rank == 0 {
            Self::listen(world, deadline, timeout)
        } else {
            Self::join(world, deadline, timeout)
        }
    }

    fn listen(world: &World, deadline: Instant, timeout: Duration) -> Result<Self> {
        let listener = TcpListener::bind(("0.0.0.0", world.master_port))
            .map_err(|e| rdv_err(world, format!("cannot listen: {e}")))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| rdv_err(world, e))?;
        let n = world.world_size;
        let mut slots: Vec<Option<TcpStream>> = (1..n).map(|_| None).collect();
        while slots.iter().any(Option::is_none) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).map_err(|e| rdv_err(world, e))?;
                    s.set_nodelay(true).ok();
                    s.set_read_timeout(Some(timeout)).ok();
                    let (rank, size) = read_hello(&mut s).map_err(|e| rdv_err(world, e))?;
                    if size != n {
                        return Err(rdv_err(
                            world,
                            format!("rank {rank} says WORLD_SIZE={size}, rank 0 has {n}"),
                        ));
                    }
                    let slot = rank
                        .checked_sub(1)
                        .and_then(|i| slots.get_mut(i))
                        .ok_or_else(|| rdv_err(world, format!("a peer claims rank {rank}")))?;
                    if slot.is_some() {
                        return Err(rdv_err(world, format!("two processes claim rank {rank}")));
                    }
                    s.set_read_timeout(None).ok();
                    *slot = Some(s);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        let missing: Vec<String> = slots
                            .iter()
                            .enumerate()
                            .filter(|(_, s)| s.is_none())
                            .map(|(i, _)| (i + 1).to_string())
                            .collect();
                        return Err(rdv_err(
                            world,
                            format!(
                                "ranks {} did not join within {} s",
                                missing.join(", "),
                                timeout.as_secs()
                            ),
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(rdv_err(world, e)),
            }
        }
        let mut peers: Vec<TcpStream> = slots.into_iter().flatten().collect();
        for p in &mut peers {
            p.write_all(MAGIC).map_err(|e| rdv_err(world, e))?;
        }
        Ok(Self {
            rank: 0,
            world_size: n,
            peers,
        })
    }

    fn join(world: &World, deadline: Instant, timeout: Duration) -> Result<Self> {
        let addrs: Vec<SocketAddr> = (world.master_addr.as_str(), world.master_port)
            .to_socket_addrs()
            .map_err(|e| rdv_err(world, format!("cannot resolve MASTER_ADDR: {e}")))?
            .collect();
        let mut last = String::from("no address");
        loop {
            for a in &addrs {
                match TcpStream::connect_timeout(a, Duration::from_secs(2)) {
                    Ok(mut s) => {
                        s.set_nodelay(true).ok();
                        let mut hello = MAGIC.to_vec();
                        hello.extend((world.rank as u64).to_le_bytes());
                        hello.extend((world.world_size as u64).to_le_bytes());
                        s.write_all(&hello).map_err(|e| rdv_err(world, e))?;
                        s.set_read_timeout(Some(timeout)).ok();
                        let mut ack = [0u8; 8];
                        s.read_exact(&mut ack).map_err(|e| {
                            rdv_err(world, format!("rank 0 did not finish the rendezvous: {e}"))
                        })?;
                        if &ack != MAGIC {
                            return Err(rdv_err(world, "not a PRIP rendezvous"));
                        }
                        s.set_read_timeout(None).ok();
                        return Ok(Self {
                            rank: world.rank,
                            world_size: world.world_size,
                            peers: vec![s],
                        });
                    }
                    Err(e) => last = e.to_string(),
                }
            }
            if Instant::now() >= deadline {
                return Err(rdv_err(
                    world,
                    format!(
                        "rank 0 not reachable within {} s ({last})",
                        timeout.as_secs()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of processes.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// Rank 0's `bytes` on every rank (other ranks pass anything; it is ignored).
    pub fn broadcast_bytes(&mut self, bytes: &[u8]) -> Result<Vec<u8>> {
        if self.rank == 0 {
            for p in &mut self.peers {
                send_frame(p, bytes)?;
            }
            Ok(bytes.to_vec())
        } else {
            recv_frame(&mut self.peers[0])
        }
    }

    /// Sums `xs` over all ranks in place: the others send theirs to rank 0, which adds
    /// them in rank order (so every run sums the same way) and sends the total back.
    pub fn all_reduce_f32(&mut self, xs: &mut [f32]) -> Result<()> {
        if self.rank == 0 {
            for p in &mut self.peers {
                let other = recv_frame(p)?;
                if other.len() != xs.len() * 4 {
                    return Err(TrainError::Config(format!(
                        "all-reduce: a rank sent {} values, rank 0 has {}",
                        other.len() / 4,
                        xs.len()
                    )));
                }
                for (x, b) in xs.iter_mut().zip(other.chunks_exact(4)) {
                    *x += f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            let bytes = f32_bytes(xs);
            for p in &mut self.peers {
                send_frame(p, &bytes)?;
            }
        } else {
            send_frame(&mut self.peers[0], &f32_bytes(xs))?;
            let sum = recv_frame(&mut self.peers[0])?;
            if sum.len() != xs.len() * 4 {
                return Err(TrainError::Config(
                    "all-reduce: rank 0 answered a different size".into(),
                ));
            }
            for (x, b) in xs.iter_mut().zip(sum.chunks_exact(4)) {
                *x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        Ok(())
    }
}

impl Drop for Rendezvous {
    fn drop(&mut self) {
        for p in &self.peers {
            p.shutdown(Shutdown::Both).ok();
        }
    }
}

fn read_hello(s: &mut TcpStream) -> std::io::Result<(usize, usize)> {
    let mut buf = [0u8; 24];
    s.read_exact(&mut buf)?;
    if &buf[..8] != MAGIC {
        return Err(std::io::Error::other(
            "a connection that is not a PRIP rank",
        ));
    }
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&buf[i..i + 8]);
        u64::from_le_bytes(w) as usize
    };
    Ok((word(8), word(16)))
}

fn f32_bytes(xs: &[f32]) -> Vec<u8> {
    xs.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn peer_lost(e: std::io::Error) -> TrainError {
    TrainError::Config(format!(
        "lost a training process ({e}); another rank probably failed, see its error"
    ))
}

fn send_frame(s: &mut TcpStream, bytes: &[u8]) -> Result<()> {
    s.write_all(&(bytes.len() as u64).to_le_bytes())
        .and_then(|_| s.write_all(bytes))
        .map_err(peer_lost)
}

fn recv_frame(s: &mut TcpStream) -> Result<Vec<u8>> {
    let mut len = [0u8; 8];
    s.read_exact(&mut len).map_err(peer_lost)?;
    let mut buf = vec![0u8; u64::from_le_bytes(len) as usize];
    s.read_exact(&mut buf).map_err(peer_lost)?;
    Ok(buf)
}

/// Gradient sync over the rendezvous sockets, for CPU training (and for testing the
/// protocol without a GPU).
#[derive(Debug)]
pub struct TcpSync {
    rv: Rendezvous,
}

impl TcpSync {
    /// Over an established rendezvous.
    pub fn new(rv: Rendezvous) -> Self {
        Self { rv }
    }
}

impl GradientSync for TcpSync {
    fn rank(&self) -> usize {
        self.rv.rank
    }
    fn world_size(&self) -> usize {
        self.rv.world_size
    }
    fn all_reduce_sum(&mut self, values: &Tensor) -> Result<Tensor> {
        let mut xs = values
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        self.rv.all_reduce_f32(&mut xs)?;
        Ok(Tensor::from_vec(xs, values.shape(), values.device())?)
    }
    fn broadcast(&mut self, values: &Tensor) -> Result<Tensor> {
        let xs = values
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        let got = self.rv.broadcast_bytes(&f32_bytes(&xs))?;
        if got.len() != xs.len() * 4 {
            return Err(TrainError::Config(
                "broadcast: rank 0 sent a different size".into(),
            ));
        }
        let ys: Vec<f32> = got
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok(Tensor::from_vec(ys, values.shape(), values.device())?)
    }
}

#[cfg(feature = "cuda")]
mod nccl {
    //! NCCL over candle's cudarc: the all-reduce runs on candle's own CUDA stream, so it is
    //! ordered after the backward pass that produced the gradients without a host sync.

    use candle_core::cuda_backend::cudarc::nccl::{Comm, Id, ReduceOp};
    use candle_core::{CpuStorage, CudaDevice, CudaStorage, DType, Layout, Shape, Tensor};

    use super::{GradientSync, Rendezvous};
    use crate::{Result, TrainError};

    /// One NCCL communicator per process.
    #[derive(Debug)]
    pub struct NcclSync {
        comm: Comm,
    }

    fn nccl_err(what: &str, e: impl std::fmt::Debug) -> TrainError {
        TrainError::Config(format!(
            "NCCL {what} failed ({e:?}); set NCCL_DEBUG=INFO for NCCL's own account"
        ))
    }

    impl NcclSync {
        /// Rank 0 makes NCCL's unique id and sends it through the rendezvous; every rank
        /// then joins the communicator on `dev`.
        pub fn new(mut rv: Rendezvous, dev: &CudaDevice) -> Result<Self> {
            let mine = if rv.rank() == 0 {
                let id = Id::new().map_err(|e| nccl_err("unique id", e))?;
                id.internal().iter().map(|c| *c as u8).collect::<Vec<u8>>()
            } else {
                vec![0u8; 128]
            };
            let got = rv.broadcast_bytes(&mine)?;
            let mut internal = [0 as std::ffi::c_char; 128];
            if got.len() != internal.len() {
                return Err(nccl_err("rendezvous", "an id of the wrong size"));
            }
            for (d, s) in internal.iter_mut().zip(&got) {
                *d = *s as std::ffi::c_char;
            }
            let comm = Comm::from_rank(
                dev.cuda_stream(),
                rv.rank(),
                rv.world_size(),
                Id::uninit(internal),
            )
            .map_err(|e| nccl_err("init", e))?;
            Ok(Self { comm })
        }
    }

    /// The collective as a candle op, so it reads and writes candle's CUDA storage.
    struct Collective<'a> {
        comm: &'a Comm,
        broadcast: bool,
    }

    impl candle_core::CustomOp1 for Collective<'_> {
        fn name(&self) -> &'static str {
            if self.broadcast {
                "nccl-broadcast"
            } else {
                "nccl-all-reduce"
            }
        }

        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
            candle_core::bail!("NCCL collectives run on CUDA tensors only")
        }

        fn cuda_fwd(
            &self,
            s: &CudaStorage,
            l: &Layout,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            let n = l.shape().elem_count();
            let src = s.as_cuda_slice::<f32>()?;
            let src = match l.contiguous_offsets() {
                Some((0, end)) if end == n => src.slice(0..n),
                _ => candle_core::bail!("NCCL collectives need a contiguous tensor"),
            };
            let dev = s.device.clone();
            let mut dst = dev.alloc_zeros::<f32>(n)?;
            let done = if self.broadcast {
                self.comm.broadcast(Some(&src), &mut dst, 0)
            } else {
                self.comm.all_reduce(&src, &mut dst, &ReduceOp::Sum)
            };
            done.map_err(|e| candle_core::Error::Msg(format!("NCCL {}: {e:?}", self.name())))?;
            Ok((CudaStorage::wrap_cuda_slice(dst, dev), l.shape().clone()))
        }
    }

    impl NcclSync {
        fn run(&self, values: &Tensor, broadcast: bool) -> Result<Tensor> {
            let v = values.to_dtype(DType::F32)?.contiguous()?;
            let op = Collective {
                comm: &self.comm,
                broadcast,
            };
            Ok(v.apply_op1_no_bwd(&op)?)
        }
    }

    impl GradientSync for NcclSync {
        fn rank(&self) -> usize {
            self.comm.rank()
        }
        fn world_size(&self) -> usize {
            self.comm.world_size()
        }
        fn all_reduce_sum(&mut self, values: &Tensor) -> Result<Tensor> {
            self.run(values, false)
        }
        fn broadcast(&mut self, values: &Tensor) -> Result<Tensor> {
            self.run(values, true)
        }
    }
}

// ---------------------------------------------------------------------------------------
// What the training loop does with a group

/// The share of a global batch that `rank` trains on: `per_rank` records from
/// `rank * per_rank` (fewer, or none, at the end of a short batch).
pub fn shard<T>(batch: &[T], rank: usize, per_rank: usize) -> &[T] {
    let lo = (rank * per_rank).min(batch.len());
    let hi = (lo + per_rank).min(batch.len());
    &batch[lo..hi]
}

/// One step's figures over all ranks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepTotals {
    /// Mean loss over the ranks that had one (non-finite when any rank's was).
    pub loss: f64,
    /// Ranks whose share gave a loss; 0 means the step is skipped everywhere.
    pub ranks_with_loss: usize,
    /// Tokens (or prompts) over all ranks.
    pub tokens: usize,
}

/// Combines one step over all ranks in a single collective: the gradients of `params`
/// (zeros where this rank had no loss or no gradient) are summed and divided by the
/// number of ranks that had a loss, and the loss and token counts are totalled. Returns
/// the averaged gradients (only `params`, f32 as the parameters) and the totals. With one
/// process it returns the local figures untouched.
pub fn sync_step(
    sync: &mut dyn GradientSync,
    params: &[(String, Var)],
    local: Option<(f64, GradStore)>,
    tokens: usize,
) -> Result<(GradStore, StepTotals)> {
    if sync.world_size() == 1 {
        return Ok(match local {
            Some((loss, grads)) => (
                grads,
                StepTotals {
                    loss,
                    ranks_with_loss: 1,
                    tokens,
                },
            ),
            None => (
                GradStore::default(),
                StepTotals {
                    loss: f64::NAN,
                    ranks_with_loss: 0,
                    tokens,
                },
            ),
        });
    }
    let Some(device) = params.first().map(|(_, p)| p.device().clone()) else {
        return Err(TrainError::Config("nothing to train".into()));
    };
    let (loss, grads) = match &local {
        Some((l, g)) => (*l, Some(g)),
        None => (0.0, None),
    };
    let mut parts = Vec::with_capacity(params.len() + 1);
    for (_, p) in params {
        let g = match grads.and_then(|g| g.get(p.as_tensor())) {
            // A non-finite local loss has no gradients to share; the NaN in the loss
            // total stops every rank.
            Some(g) if loss.is_finite() => g.to_dtype(DType::F32)?.flatten_all()?,
            _ => Tensor::zeros(p.elem_count(), DType::F32, &device)?,
        };
        parts.push(g);
    }
    let stats = [
        if local.is_some() { loss as f32 } else { 0.0 },
        local.is_some() as u8 as f32,
        tokens as f32,
    ];
    parts.push(Tensor::new(&stats, &device)?);
    let flat = Tensor::cat(&parts, 0)?;
    let sum = sync.all_reduce_sum(&flat)?;
    let n_stats = stats.len();
    let total: Vec<f32> = sum.narrow(0, sum.dim(0)? - n_stats, n_stats)?.to_vec1()?;
    let ranks = total[1].round().max(0.0) as usize;
    let totals = StepTotals {
        loss: if ranks == 0 {
            f64::NAN
        } else {
            total[0] as f64 / ranks as f64
        },
        ranks_with_loss: ranks,
        tokens: total[2].round().max(0.0) as usize,
    };
    let mut out = GradStore::default();
    if ranks > 0 {
        let scale = 1.0 / ranks as f64;
        let mut at = 0;
        for (_, p) in params {
            let n = p.elem_count();
            let g = (sum.narrow(0, at, n)?.reshape(p.shape())? * scale)?.to_dtype(p.dtype())?;
            out.insert(p.as_tensor(), g);
            at += n;
        }
    }
    Ok((out, totals))
}

/// Makes every rank's `params` equal to rank 0's (fresh LoRAs and heads are initialised
/// per process). One collective; nothing with one process.
pub fn broadcast_params(sync: &mut dyn GradientSync, params: &[(String, Var)]) -> Result<()> {
    if sync.world_size() == 1 || params.is_empty() {
        return Ok(());
    }
    let flat = Tensor::cat(
        &params
            .iter()
            .map(|(_, p)| p.as_tensor().to_dtype(DType::F32)?.flatten_all())
            .collect::<candle_core::Result<Vec<_>>>()?,
        0,
    )?;
    let got = sync.broadcast(&flat)?;
    let mut at = 0;
    for (_, p) in params {
        let n = p.elem_count();
        p.set(
            &got.narrow(0, at, n)?
                .reshape(p.shape())?
                .to_dtype(p.dtype())?,
        )?;
        at += n;
    }
    Ok(())
}

/// Brings every rank to the same point with the same verdict: when this rank's `result`
/// is an error, it is returned here, and every other rank gets an error naming the rank
/// that failed instead of waiting for it forever.
pub fn agree<T>(sync: &mut dyn GradientSync, device: &Device, result: Result<T>) -> Result<T> {
    if sync.world_size() == 1 {
        return result;
    }
    let mut flags = vec![0f32; sync.world_size()];
    if result.is_err() {
        flags[sync.rank()] = 1.0;
    }
    let n = flags.len();
    let sum = sync
        .all_reduce_sum(&Tensor::from_vec(flags, n, device)?)?
        .to_vec1::<f32>()?;
    match result {
        Err(e) => Err(e),
        Ok(v) => match sum.iter().position(|f| *f > 0.5) {
            Some(r) => Err(TrainError::Config(format!(
                "rank {r} failed (see its error); rank {} stopped too",
                sync.rank()
            ))),
            None => Ok(v),
        },
    }
}

// ---------------------------------------------------------------------------------------
// The launcher: `prip train ... --gpus all|N`

/// How many GPUs `--gpus` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gpus {
    /// Every GPU the driver reports.
    All,
    /// The first N.
    Count(usize),
}

impl std::str::FromStr for Gpus {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "all" => Ok(Self::All),
            n => match n.parse::<usize>() {
                Ok(n) if n > 0 => Ok(Self::Count(n)),
                _ => Err(format!("{s:?}: use all or a number of GPUs (1 or more)")),
            },
        }
    }
}

/// The processes one machine launches for `--gpus`: torchrun's layout, with `NNODES`
/// machines of `per_node` processes and this machine's `NODE_RANK`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchPlan {
    /// One [`World`] per process to start on this machine.
    pub ranks: Vec<World>,
}

impl LaunchPlan {
    /// The plan for `per_node` processes on this machine, reading `NNODES` (default 1),
    /// `NODE_RANK` (default 0), `MASTER_ADDR` (default 127.0.0.1, required with several
    /// machines) and `MASTER_PORT` (default: a free port on one machine, 29500 on several)
    /// through `var`.
    pub fn new(per_node: usize, var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let num = |k: &str, default: usize| -> Result<usize> {
            match var(k).filter(|v| !v.trim().is_empty()) {
                None => Ok(default),
                Some(v) => v.trim().parse().map_err(|_| {
                    TrainError::Config(format!("{k}={v:?} is not a non-negative integer"))
                }),
            }
        };
        let nnodes = num("NNODES", 1)?.max(1);
        let node_rank = num("NODE_RANK", 0)?;
        if node_rank >= nnodes {
            return Err(TrainError::Config(format!(
                "NODE_RANK={node_rank} is out of range for NNODES={nnodes}"
            )));
        }
        let master_addr = match var("MASTER_ADDR") {
            Some(a) if !a.trim().is_empty() => a.trim().to_string(),
            _ if nnodes > 1 => {
                return Err(TrainError::Config(format!(
                "NNODES={nnodes}: set MASTER_ADDR to the address of the machine with NODE_RANK=0"
            )))
            }
            _ => "127.0.0.1".into(),
        };
        let master_port = match var("MASTER_PORT") {
            Some(p) if !p.trim().is_empty() => p
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| {
                    TrainError::Config(format!("MASTER_PORT={p:?} is not a port number"))
                })?,
            _ if nnodes > 1 => 29500,
            _ => free_port()?,
        };
        let world_size = nnodes * per_node;
        Ok(Self {
            ranks: (0..per_node)
                .map(|local| World {
                    rank: node_rank * per_node + local,
                    world_size,
                    local_rank: local,
                    master_addr: master_addr.clone(),
                    master_port,
                })
                .collect(),
        })
    }
}

fn free_port() -> Result<u16> {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| TrainError::Config(format!("no free local port for the rendezvous: {e}")))
}

/// `args` without `flag` and its value (`--flag V` or `--flag=V`).
pub fn without_flag(args: &[std::ffi::OsString], flag: &str) -> Vec<std::ffi::OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut skip = false;
    let with_eq = format!("{flag}=");
    for a in args {
        if skip {
            skip = false;
            continue;
        }
        let s = a.to_string_lossy();
        if s == flag {
            skip = true;
        } else if !s.starts_with(&with_eq) {
            out.push(a.clone());
        }
    }
    out
}

/// Runs `program args` once per rank of `plan` with torchrun's variables set, and waits.
/// When one exits with an error, the others are stopped (a rank waiting on a dead peer
/// inside NCCL would wait forever) and the error names the rank.
pub fn launch(program: &Path, args: &[std::ffi::OsString], plan: &LaunchPlan) -> Result<()> {
    let local_world = plan.ranks.len();
    let mut children = Vec::with_capacity(local_world);
    for w in &plan.ranks {
        let child = std::process::Command::new(program)
            .args(args)
            .env("RANK", w.rank.to_string())
            .env("LOCAL_RANK", w.local_rank.to_string())
            .env("WORLD_SIZE", w.world_size.to_string())
            .env("LOCAL_WORLD_SIZE", local_world.to_string())
            .env("MASTER_ADDR", &w.master_addr)
            .env("MASTER_PORT", w.master_port.to_string())
            .spawn();
        match child {
            Ok(c) => children.push((w.rank, Some(c))),
            Err(e) => {
                stop_all(&mut children);
                return Err(TrainError::Config(format!(
                    "cannot start rank {}: {}: {e}",
                    w.rank,
                    program.display()
                )));
            }
        }
    }
    loop {
        let mut running = 0;
        for i in 0..children.len() {
            let (rank, slot) = &mut children[i];
            let rank = *rank;
            let Some(c) = slot else { continue };
            match c.try_wait() {
                Ok(Some(status)) if status.success() => *slot = None,
                Ok(Some(status)) => {
                    *slot = None;
                    stop_all(&mut children);
                    return Err(TrainError::Config(format!(
                        "rank {rank} failed ({status}); the other ranks were stopped"
                    )));
                }
                Ok(None) => running += 1,
                Err(e) => {
                    stop_all(&mut children);
                    return Err(TrainError::Config(format!("waiting for rank {rank}: {e}")));
                }
            }
        }
        if running == 0 {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn stop_all(children: &mut [(usize, Option<std::process::Child>)]) {
    for (_, slot) in children.iter_mut() {
        if let Some(mut c) = slot.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::{AdamW, OptimConfig};
    use std::collections::HashMap;
    use std::ffi::OsString;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    /// Runs `f(rank, sync)` on `n` threads joined through a real TCP rendezvous.
    fn with_ranks<T: Send + 'static>(
        n: usize,
        f: impl Fn(usize, &mut dyn GradientSync) -> T + Send + Sync + 'static,
    ) -> Vec<T> {
        let port = free_port().unwrap();
        let f = std::sync::Arc::new(f);
        let handles: Vec<_> = (0..n)
            .map(|rank| {
                let f = f.clone();
                std::thread::spawn(move || {
                    let world = World {
                        rank,
                        world_size: n,
                        local_rank: rank,
                        master_addr: "127.0.0.1".into(),
                        master_port: port,
                    };
                    let mut sync = open_sync(&world, &Device::Cpu).unwrap();
                    f(rank, sync.as_mut())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn world_from_torchrun_variables() {
        assert_eq!(World::from_vars(vars(&[])).unwrap(), World::single());
        assert_eq!(
            World::from_vars(vars(&[("WORLD_SIZE", "1")])).unwrap(),
            World::single()
        );
        let w = World::from_vars(vars(&[
            ("RANK", "5"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29500"),
        ]))
        .unwrap();
        assert_eq!(
            (w.rank, w.world_size, w.local_rank, w.master_port),
            (5, 8, 1, 29500)
        );
        assert!(!w.is_writer() && w.is_distributed());
        for bad in [
            vec![("WORLD_SIZE", "2"), ("MASTER_PORT", "1")],
            vec![("WORLD_SIZE", "2"), ("RANK", "2"), ("MASTER_PORT", "1")],
            vec![("WORLD_SIZE", "2"), ("RANK", "1")],
            vec![("WORLD_SIZE", "x")],
            vec![("WORLD_SIZE", "2"), ("RANK", "1"), ("MASTER_PORT", "0")],
        ] {
            let e = World::from_vars(vars(&bad)).unwrap_err().to_string();
            assert!(!e.contains('\n') && !e.is_empty(), "{bad:?}: {e}");
        }
    }

    #[test]
    fn launch_plan_follows_torchrun() {
        let p = LaunchPlan::new(
            4,
            vars(&[
                ("NNODES", "2"),
                ("NODE_RANK", "1"),
                ("MASTER_ADDR", "node0"),
            ]),
        )
        .unwrap();
        let ranks: Vec<_> = p.ranks.iter().map(|w| (w.rank, w.local_rank)).collect();
        assert_eq!(ranks, vec![(4, 0), (5, 1), (6, 2), (7, 3)]);
        assert!(p
            .ranks
            .iter()
            .all(|w| w.world_size == 8 && w.master_port == 29500 && w.master_addr == "node0"));
        let one = LaunchPlan::new(2, vars(&[])).unwrap();
        assert_eq!(one.ranks[1].rank, 1);
        assert!(one.ranks[0].master_port > 0);
        assert!(LaunchPlan::new(2, vars(&[("NNODES", "2")]))
            .unwrap_err()
            .to_string()
            .contains("MASTER_ADDR"));
        assert!("0".parse::<Gpus>().is_err());
        assert_eq!("all".parse::<Gpus>().unwrap(), Gpus::All);
        assert_eq!("3".parse::<Gpus>().unwrap(), Gpus::Count(3));
    }

    #[test]
    fn strips_the_gpus_flag() {
        let args: Vec<OsString> = [
            "train", "adapt", "--gpus", "all", "--system", "x", "--gpus=2",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let kept = without_flag(&args, "--gpus");
        assert_eq!(
            kept,
            ["train", "adapt", "--system", "x"].map(OsString::from)
        );
    }

    #[test]
    fn shards_cover_the_global_batch() {
        let batch: Vec<usize> = (0..10).collect();
        assert_eq!(shard(&batch, 0, 4), &[0, 1, 2, 3]);
        assert_eq!(shard(&batch, 2, 4), &[8, 9]);
        assert!(shard(&batch, 3, 4).is_empty());
    }

    #[test]
    fn tcp_group_sums_and_broadcasts() {
        let out = with_ranks(3, |rank, sync| {
            let x = Tensor::new(&[rank as f32, 1.0, 10.0 * rank as f32], &Device::Cpu).unwrap();
            let sum = sync.all_reduce_sum(&x).unwrap().to_vec1::<f32>().unwrap();
            let b = sync.broadcast(&x).unwrap().to_vec1::<f32>().unwrap();
            (sum, b)
        });
        for (sum, b) in out {
            assert_eq!(sum, vec![3.0, 3.0, 30.0]);
            assert_eq!(b, vec![0.0, 1.0, 0.0]);
        }
    }

    #[test]
    fn a_failing_rank_stops_the_others() {
        let out = with_ranks(3, |rank, sync| {
            let mine: Result<()> = if rank == 1 {
                Err(TrainError::Config("disk full".into()))
            } else {
                Ok(())
            };
            agree(sync, &Device::Cpu, mine).map_err(|e| e.to_string())
        });
        assert_eq!(out[1].as_ref().unwrap_err(), "disk full");
        for r in [0, 2] {
            assert!(out[r].as_ref().unwrap_err().contains("rank 1 failed"));
        }
    }

    #[test]
    fn rendezvous_names_missing_ranks() {
        let world = World {
            rank: 0,
            world_size: 3,
            local_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: free_port().unwrap(),
        };
        let e = Rendezvous::connect(&world, Duration::from_millis(200))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ranks 1, 2 did not join"), "{e}");
    }

    /// Two ranks, each with half of every batch, train exactly as one process with the
    /// whole batch: the averaged gradient of the half-batch means is the full-batch mean's.
    #[test]
    fn data_parallel_steps_match_one_process() {
        let xs: Vec<f32> = (0..16).map(|i| i as f32 / 4.0 - 2.0).collect();
        let ys: Vec<f32> = xs.iter().map(|x| 3.0 * x - 1.0).collect();
        let cfg = OptimConfig {
            lr: 0.05,
            warmup_steps: 0,
            ..OptimConfig::default()
        };
        let train = move |sync: &mut dyn GradientSync, rank: usize, world: usize| {
            // Ranks start from different weights: the broadcast must fix that.
            let w = Var::new(&[rank as f32 * 5.0, 0.5], &Device::Cpu).unwrap();
            let params = vec![("w".to_string(), w.clone())];
            broadcast_params(sync, &params).unwrap();
            let mut opt = AdamW::new(cfg.clone(), params.clone()).unwrap();
            let per = 8 / world;
            for step in 0..20 {
                let lo = (step * 8) % 16;
                let batch: Vec<usize> = (lo..lo + 8).collect();
                let mine = shard(&batch, rank, per);
                let x = Tensor::new(
                    mine.iter().map(|&i| xs[i]).collect::<Vec<_>>(),
                    &Device::Cpu,
                )
                .unwrap();
                let y = Tensor::new(
                    mine.iter().map(|&i| ys[i]).collect::<Vec<_>>(),
                    &Device::Cpu,
                )
                .unwrap();
                let wt = w.as_tensor();
                let pred = x
                    .broadcast_mul(&wt.narrow(0, 0, 1).unwrap())
                    .unwrap()
                    .broadcast_add(&wt.narrow(0, 1, 1).unwrap())
                    .unwrap();
                let loss = (pred - y).unwrap().sqr().unwrap().mean_all().unwrap();
                let l = loss.to_scalar::<f32>().unwrap() as f64;
                let grads = loss.backward().unwrap();
                let (g, totals) = sync_step(sync, &params, Some((l, grads)), mine.len()).unwrap();
                assert_eq!(totals.ranks_with_loss, world);
                assert_eq!(totals.tokens, 8);
                opt.step(&g, 0.05).unwrap();
            }
            w.as_tensor().to_vec1::<f32>().unwrap()
        };
        let alone = train(&mut Single, 0, 1);
        let together = with_ranks(2, move |rank, sync| train(sync, rank, 2));
        for w in &together {
            for (a, b) in w.iter().zip(&alone) {
                assert!((a - b).abs() < 1e-5, "{w:?} vs {alone:?}");
            }
        }
    }

    #[test]
    fn a_rank_without_a_loss_does_not_dilute_the_average() {
        let out = with_ranks(2, |rank, sync| {
            let w = Var::new(&[1f32, 2.0], &Device::Cpu).unwrap();
            let params = vec![("w".to_string(), w.clone())];
            let local = (rank == 0).then(|| {
                let loss = (w.as_tensor() * 3.0).unwrap().sum_all().unwrap();
                (6.0 + 3.0, loss.backward().unwrap())
            });
            let (g, t) = sync_step(sync, &params, local, rank).unwrap();
            (g.get(w.as_tensor()).unwrap().to_vec1::<f32>().unwrap(), t)
        });
        for (g, t) in out {
            assert_eq!(g, vec![3.0, 3.0]);
            assert_eq!((t.ranks_with_loss, t.tokens), (1, 1));
            assert!((t.loss - 9.0).abs() < 1e-6);
        }
    }
}
