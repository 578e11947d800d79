//! How a GGUF matrix is stored for inference on candle 0.11.1's CPU kernels.
//!
//! GGUF files come in whatever quantization their publisher chose; the fastest layout on
//! this backend is a different question. Measured on a 2-core AVX-512 VNNI machine, one
//! thread, for one decode step through SmolLM2-135M's matrices (min of 40 runs of each
//! shape, the whole step summed): Q4_1 as shipped 59 ms (candle has only a scalar dot
//! product for it), Q8_0 10 ms, Q8_0 with the input width padded to a multiple of 256
//! 3.6 ms, because candle then takes its repacked VNNI tile kernels (`repack_x86::select`:
//! Q8_0 with k a multiple of QK_K = 256, not on plain AVX2). The padded layout also
//! batches: 40 ms for 32 rows, against 327 ms unpadded and 118 ms for a dense f32 gemm.
//! Q8_0 holds a 4- or 5-bit block to within 1/254 of its range, far below the source's own
//! step, so requantizing keeps the model (tests below; `prip eval text` in the README).

use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Result};

/// Width multiple that candle's x86 tile kernels need (`QK_K`).
const TILE_K: usize = 256;

/// The layout chosen for one (out, in) matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Quantization to store it in.
    pub dtype: GgmlDType,
    /// Stored input width (`in` plus zero columns).
    pub padded_in: usize,
    /// Whether candle multiplies many rows at once faster than row by row in this
    /// layout; when not, large batches dequantize the matrix for the call instead.
    pub batched_kernel: bool,
}

/// What this CPU offers candle's quantized kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuKernels {
    /// x86 with AVX-512 VNNI or AVX-VNNI: Q8_0 tiles when `in` is a multiple of 256.
    X86Vnni,
    /// Anything else: the per-type dot products.
    Generic,
    /// Keep every matrix as the GGUF stores it (`PRIP_GGUF_LAYOUT=published`): the
    /// baseline the benchmark and `prip eval text` compare the prepared layout with.
    Published,
}

impl CpuKernels {
    /// Detects the kernels candle will use on this CPU, unless `PRIP_GGUF_LAYOUT` is
    /// `published`.
    pub fn detect() -> Self {
        if std::env::var("PRIP_GGUF_LAYOUT").is_ok_and(|v| v == "published") {
            return Self::Published;
        }
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512vnni")
                || std::arch::is_x86_feature_detected!("avxvnni")
            {
                return Self::X86Vnni;
            }
        }
        Self::Generic
    }
}

/// Quantizations whose CPU dot product in candle 0.11.1 is scalar (no SIMD kernel).
fn scalar_dot(dtype: GgmlDType) -> bool {
    matches!(
        dtype,
        GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 | GgmlDType::Q8_1
    )
}

/// The layout for a (out, `in_dim`) matrix stored as `dtype`, on `kernels`.
pub fn layout(dtype: GgmlDType, in_dim: usize, kernels: CpuKernels) -> Layout {
    let is_block = dtype.block_size() > 1 && in_dim.is_multiple_of(32);
    match kernels {
        CpuKernels::Published => Layout {
            dtype,
            padded_in: in_dim,
            batched_kernel: false,
        },
        CpuKernels::X86Vnni if is_block && dtype != GgmlDType::Q4K => Layout {
            dtype: GgmlDType::Q8_0,
            padded_in: in_dim.next_multiple_of(TILE_K),
            batched_kernel: true,
        },
        _ if is_block && scalar_dot(dtype) => Layout {
            dtype: GgmlDType::Q8_0,
            padded_in: in_dim,
            batched_kernel: false,
        },
        _ => Layout {
            dtype,
            padded_in: in_dim,
            batched_kernel: matches!(dtype, GgmlDType::Q4K) && in_dim.is_multiple_of(TILE_K),
        },
    }
}

/// Stores a GGUF matrix (out, `in_dim`) in the layout [`layout`] picks for `device`:
/// requantized and zero-padded on the CPU, untouched on a GPU (candle's CUDA kernels
/// handle the GGUF types themselves). A matrix already in its layout (from a
/// [`prepared_file`]) is kept as it is. Returns the stored tensor and its layout.
pub fn prepare(
    t: QTensor,
    in_dim: usize,
    device: &Device,
    kernels: CpuKernels,
) -> Result<(QTensor, Layout)> {
    let (_, stored_in) = t.shape().dims2()?;
    if stored_in < in_dim {
        candle_core::bail!("matrix is {stored_in} wide, the model needs {in_dim}");
    }
    if !device.is_cpu() && stored_in == in_dim {
        let keep = Layout {
            dtype: t.dtype(),
            padded_in: in_dim,
            batched_kernel: false,
        };
        return Ok((t, keep));
    }
    let target = if device.is_cpu() {
        layout(t.dtype(), in_dim, kernels)
    } else {
        layout(t.dtype(), in_dim, CpuKernels::Generic)
    };
    if t.dtype() == target.dtype && stored_in == target.padded_in {
        return Ok((t, target));
    }
    let w = t.dequantize(device)?.narrow(1, 0, in_dim)?;
    let w = w.pad_with_zeros(1, 0, target.padded_in - in_dim)?;
    Ok((QTensor::quantize(&w, target.dtype)?, target))
}

/// Metadata key of a prepared file: the layout tag it was prepared for.
const PREPARED_LAYOUT: &str = "prip.prepared.layout";
/// Metadata key of a prepared file: the identity (size and modification time) of the
/// GGUF it was made from.
const PREPARED_SOURCE: &str = "prip.prepared.source";
/// Version of the prepared-file layout; a copy of another version is rebuilt.
const PREPARED_VERSION: u32 = 2;

/// What an architecture tells [`prepared_file`] about its matrices.
pub trait Preparation {
    /// The logical input width of matrix `name`, stored `stored` wide (maybe padded).
    fn input_width(&self, name: &str, stored: usize) -> usize;
    /// Matrices that read the same input, stored stacked: (stacked name, parts in row
    /// order). One matmul then serves them all (see [`crate::nn::forward_shared`]).
    fn stacks(&self) -> Vec<(String, Vec<String>)>;
}

/// The GGUF to load for CPU inference: a copy of `source` with every matrix [`prepare`]d
/// and the architecture's stacks stacked, written once beside the source
/// (`<name>.<tag>.gguf`, atomically) and reused while the source's size and
/// modification time and the layout stay the same. Preparing SmolLM2-135M takes about a
/// second; loading the copy skips that on every later start. `plan` reads the
/// architecture from the source's metadata.
///
/// # Errors
/// The source cannot be read or planned, or the copy cannot be written (a read-only
/// folder): the caller then prepares in memory.
pub fn prepared_file<P: Preparation>(
    source: &Path,
    kernels: CpuKernels,
    plan: impl FnOnce(&gguf_file::Content) -> Result<P>,
) -> Result<PathBuf> {
    let tag = match kernels {
        CpuKernels::X86Vnni => "q8_0-k256",
        CpuKernels::Generic => "q8_0",
        CpuKernels::Published => return Ok(source.to_path_buf()),
    };
    let version = format!("{tag} v{PREPARED_VERSION}");
    let meta = std::fs::metadata(source)?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let identity = format!("{} bytes, modified {modified} ns", meta.len());
    let name = source
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("model");
    let derived = source.with_file_name(format!("{name}.{tag}.gguf"));
    if let Ok(f) = std::fs::File::open(&derived) {
        let mut f = std::io::BufReader::new(f);
        if let Ok(c) = gguf_file::Content::read(&mut f) {
            let same = |k: &str, v: &str| {
                c.metadata
                    .get(k)
                    .and_then(|x| x.to_string().ok())
                    .map(String::as_str)
                    == Some(v)
            };
            if same(PREPARED_LAYOUT, &version) && same(PREPARED_SOURCE, &identity) {
                return Ok(derived);
            }
        }
    }
    let mut file = std::io::BufReader::new(std::fs::File::open(source)?);
    let content = gguf_file::Content::read(&mut file)?;
    let plan = plan(&content)?;
    let device = Device::Cpu;
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(content.tensor_infos.len());
    let mut stacked_parts = std::collections::HashSet::new();
    for (stack, parts) in plan.stacks() {
        if !parts.iter().all(|p| content.tensor_infos.contains_key(p)) {
            continue;
        }
        let mut rows = Vec::with_capacity(parts.len());
        let mut dtype = None;
        for p in &parts {
            let t = content.tensor(&mut file, p, &device)?;
            let (_, stored) = t.shape().dims2()?;
            dtype.get_or_insert(t.dtype());
            rows.push(
                t.dequantize(&device)?
                    .narrow(1, 0, plan.input_width(p, stored))?,
            );
        }
        let w = candle_core::Tensor::cat(&rows, 0)?;
        let in_dim = w.dim(1)?;
        let target = layout(dtype.unwrap_or(GgmlDType::Q8_0), in_dim, kernels);
        let w = w.pad_with_zeros(1, 0, target.padded_in - in_dim)?;
        tensors.push((stack, QTensor::quantize(&w, target.dtype)?));
        stacked_parts.extend(parts);
    }
    let mut names: Vec<&String> = content
        .tensor_infos
        .keys()
        .filter(|n| !stacked_parts.contains(*n))
        .collect();
    names.sort();
    for name in names {
        let t = content.tensor(&mut file, name, &device)?;
        let t = match t.shape().dims() {
            &[_, stored_in] if t.dtype().block_size() > 1 => {
                prepare(t, plan.input_width(name, stored_in), &device, kernels)?.0
            }
            _ => t,
        };
        tensors.push((name.clone(), t));
    }
    let layout_value = gguf_file::Value::String(version);
    let source_value = gguf_file::Value::String(identity);
    let mut metadata: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .filter(|(k, _)| !k.starts_with("prip.prepared."))
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    metadata.push((PREPARED_LAYOUT, &layout_value));
    metadata.push((PREPARED_SOURCE, &source_value));
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let dir = derived.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        gguf_file::write(&mut w, &metadata, &refs)?;
        std::io::Write::flush(&mut w)?;
    }
    // A temporary file is private (0600); the copy is as readable as its source.
    std::fs::set_permissions(tmp.path(), meta.permissions())?;
    tmp.persist(&derived)
        .map_err(|e| candle_core::Error::Io(e.error))?;
    tracing::info!(
        "prepared {} for this CPU as {}",
        source.display(),
        derived.display()
    );
    Ok(derived)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Module, Tensor};

    #[test]
    fn scalar_types_become_q8_0_and_vnni_pads_to_tiles() {
        let l = layout(GgmlDType::Q4_1, 576, CpuKernels::Generic);
        assert_eq!((l.dtype, l.padded_in), (GgmlDType::Q8_0, 576));
        let l = layout(GgmlDType::Q4_1, 576, CpuKernels::X86Vnni);
        assert_eq!((l.dtype, l.padded_in), (GgmlDType::Q8_0, 768));
        let l = layout(GgmlDType::Q8_0, 1536, CpuKernels::X86Vnni);
        assert_eq!((l.dtype, l.padded_in), (GgmlDType::Q8_0, 1536));
        // Types with SIMD kernels stay as published where no tiles apply.
        let l = layout(GgmlDType::Q4_0, 576, CpuKernels::Generic);
        assert_eq!((l.dtype, l.padded_in), (GgmlDType::Q4_0, 576));
        let l = layout(GgmlDType::F32, 576, CpuKernels::X86Vnni);
        assert_eq!((l.dtype, l.padded_in), (GgmlDType::F32, 576));
        let l = layout(GgmlDType::Q4_1, 576, CpuKernels::Published);
        assert_eq!((l.dtype, l.padded_in), (GgmlDType::Q4_1, 576));
    }

    /// The requantized, padded matrix multiplies like the published one: Q8_0 holds a
    /// Q4_1 block to within 1/254 of its range, far below Q4_1's own step.
    #[test]
    fn prepared_matrix_multiplies_like_the_original() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (48, 96), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (5, 96), &dev).unwrap();
        let q41 = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
        let reference = x
            .matmul(&q41.dequantize(&dev).unwrap().t().unwrap())
            .unwrap();
        for kernels in [CpuKernels::Generic, CpuKernels::X86Vnni] {
            let q41 = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
            let (q, l) = prepare(q41, 96, &dev, kernels).unwrap();
            assert_eq!(q.shape().dims2().unwrap(), (48, l.padded_in));
            let xp = x.pad_with_zeros(1, 0, l.padded_in - 96).unwrap();
            let mm = candle_core::quantized::QMatMul::from_qtensor(q).unwrap();
            let y = mm.forward(&xp).unwrap();
            let err = (y - &reference)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let scale = reference
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(err < 0.03 * scale, "{kernels:?}: error {err} of {scale}");
        }
    }
}
