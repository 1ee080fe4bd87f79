//! Optimisation with PyTorch's semantics, which TRL users' numbers depend on: the *global*
//! gradient norm and clipping of `torch.nn.utils.clip_grad_norm_`, `torch.optim.AdamW`
//! (decoupled weight decay, bias-corrected moments, `eps` outside the square root) and
//! `torch.optim.SGD`, and transformers' learning-rate schedules.
//!
//! burn's own optimizers clip each tensor by its own norm and place `eps` differently; these are
//! written against parameters directly so every step matches torch's arithmetic. Optimizer state
//! is keyed by each parameter's module path (`model.layers.0.mlp.up_proj.weight`), which is stable
//! across runs and therefore checkpointable.

use std::collections::BTreeMap;

use burn::module::{ModuleMapper, ModuleVisitor, Param};
use burn::optim::{GradientsParams, MultiGradientsParams};
use burn::prelude::*;
use burn::tensor::FloatDType;

use crate::error::{Error, Result};

/// Which optimizer, with its hyper-parameters (transformers' `optim` names).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptimizerKind {
    /// `adamw_torch`: `torch.optim.AdamW`.
    AdamW {
        /// `adam_beta1` (0.9).
        beta1: f64,
        /// `adam_beta2` (0.999).
        beta2: f64,
        /// `adam_epsilon` (1e-8).
        eps: f64,
        /// `weight_decay` (0), decoupled: `p ← p (1 − lr·wd)`.
        weight_decay: f64,
    },
    /// `sgd`: `torch.optim.SGD` without momentum; `weight_decay` is added to the gradient.
    Sgd {
        /// `weight_decay` (0).
        weight_decay: f64,
    },
}

crate::choice! {
    /// transformers' `optim` names this trainer implements.
    pub enum Optim("optim") {
        /// `torch.optim.AdamW` (also `adamw_torch_fused`, `adamw_hf` and `adamw`: the same
        /// arithmetic).
        AdamwTorch = "adamw_torch" | "adamw_torch_fused" | "adamw_hf" | "adamw",
        /// `torch.optim.SGD` without momentum.
        Sgd = "sgd",
    }
}

impl OptimizerKind {
    /// `optim` with the shared hyper-parameters.
    ///
    /// # Errors
    /// [`Error::Settings`] for out-of-range values.
    pub fn new(optim: Optim, beta1: f64, beta2: f64, eps: f64, weight_decay: f64) -> Result<Self> {
        let bad = |reason: String| Err(Error::Settings { reason });
        if !(0.0..1.0).contains(&beta1) || !(0.0..1.0).contains(&beta2) {
            return bad(format!("adam_beta1 and adam_beta2 must be in [0, 1), got {beta1} and {beta2}"));
        }
        if eps.is_nan() || eps < 0.0 || weight_decay.is_nan() || weight_decay < 0.0 {
            return bad(format!("adam_epsilon and weight_decay must be >= 0, got {eps} and {weight_decay}"));
        }
        Ok(match optim {
            Optim::AdamwTorch => Self::AdamW { beta1, beta2, eps, weight_decay },
            Optim::Sgd => Self::Sgd { weight_decay },
        })
    }
}

/// Per-parameter optimizer state on the host side of a checkpoint: `(path, first moment, second
/// moment)`, flattened (empty for SGD).
pub type HostMoments = Vec<(String, Vec<f32>, Vec<f32>)>;

/// Where the optimizer keeps what it updates narrower than f32.
///
/// Every update is computed in f32. A parameter held in bf16 or f16 (the bf16-weights mode) and
/// AdamW moments held in `moments` take the f32 result by [`round_stochastic`]: rounded up or
/// down with the probabilities that make the stored value exact in expectation, so an update far
/// below the format's resolution (a weight of 0.02 has a bf16 spacing of 1.2e-4; AdamW's steps at
/// lr 5e-7 are 5e-7) still moves the weight on average, where rounding to nearest drops it every
/// step. The random draws are seeded by `seed`, the step and the parameter's path, so a resumed
/// run rounds exactly as the uninterrupted one. f32 tensors are never rounded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimizerStorage {
    /// The dtype of AdamW's two moments (f32, or bf16: 4 bytes per parameter less).
    pub moments: FloatDType,
    /// The seed of the stochastic rounding.
    pub seed: u64,
}

impl Default for OptimizerStorage {
    /// f32 moments (torch's AdamW), seed 0.
    fn default() -> Self {
        Self { moments: FloatDType::F32, seed: 0 }
    }
}

/// An optimizer's state: the step count and, for AdamW, both moments of every parameter.
#[derive(Debug, Clone)]
pub struct Optimizer {
    kind: OptimizerKind,
    storage: OptimizerStorage,
    /// Optimizer steps taken.
    step: u64,
    moments: BTreeMap<String, (Tensor<1>, Tensor<1>)>,
}

impl Optimizer {
    /// A fresh optimizer.
    pub fn new(kind: OptimizerKind, storage: OptimizerStorage) -> Self {
        Self { kind, storage, step: 0, moments: BTreeMap::new() }
    }

    /// Where the state is kept.
    pub fn storage(&self) -> OptimizerStorage {
        self.storage
    }

    /// The optimizer's settings.
    pub fn kind(&self) -> OptimizerKind {
        self.kind
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Applies one update with learning rate `lr` to every parameter of `module` that has a
    /// gradient in `grads`, after scaling the gradients by `grad_scale` (the clipping factor).
    pub fn step<M: Module>(&mut self, module: M, grads: &mut GradientsParams, lr: f64, grad_scale: f64) -> M {
        self.step += 1;
        let mut mapper = Update { optimizer: self, grads, lr, grad_scale, path: Vec::new() };
        module.map(&mut mapper)
    }

    /// The state as host data, for checkpoints.
    pub fn to_host(&self) -> (u64, HostMoments) {
        let moments = self.moments.iter().map(|(k, (m, v))| (k.clone(), host(m.clone()), host(v.clone()))).collect();
        (self.step, moments)
    }

    /// Restores the state written by [`Self::to_host`] onto `device`, the moments in
    /// `storage.moments` (exactly: bf16 moments were written as their f32 values).
    pub fn from_host(
        kind: OptimizerKind,
        storage: OptimizerStorage,
        step: u64,
        moments: HostMoments,
        device: &Device,
    ) -> Self {
        let to = |v: Vec<f32>| {
            let n = v.len();
            Tensor::<1>::from_data(TensorData::new(v, [n]), (device, burn::tensor::DType::F32)).cast(storage.moments)
        };
        let moments = moments.into_iter().map(|(k, m, v)| (k, (to(m), to(v)))).collect();
        Self { kind, storage, step, moments }
    }

    /// Checks restored moments against the parameters `module` trains: every moment belongs to
    /// a trainable parameter with as many values, and (after a step of AdamW) every trainable
    /// parameter has its moments. A checkpoint of another model or LoRA layout is refused here
    /// instead of panicking in the first update.
    ///
    /// # Errors
    /// [`Error::Settings`] naming the first tensor that does not fit.
    pub fn check_moments<M: Module>(&self, module: &M) -> Result<()> {
        let trainable = trainable_sizes(module);
        for (path, (m, _)) in &self.moments {
            let n = m.dims()[0];
            match trainable.get(path) {
                None => {
                    return Err(Error::Settings {
                        reason: format!(
                            "the optimizer state has moments for `{path}`, which the model does not train (another model or LoRA layout)"
                        ),
                    });
                }
                Some(&size) if size != n => {
                    return Err(Error::Settings {
                        reason: format!(
                            "the optimizer state's moments of `{path}` have {n} values, the model's parameter {size} (another model or LoRA layout)"
                        ),
                    });
                }
                Some(_) => {}
            }
        }
        if matches!(self.kind, OptimizerKind::AdamW { .. })
            && self.step > 0
            && let Some(path) = trainable.keys().find(|p| !self.moments.contains_key(*p))
        {
            return Err(Error::Settings {
                reason: format!(
                    "the optimizer state has no moments for `{path}`, which the model trains (another model or LoRA layout)"
                ),
            });
        }
        Ok(())
    }
}

/// Element counts of `module`'s trainable (gradient-requiring) float parameters, by path.
fn trainable_sizes<M: Module>(module: &M) -> BTreeMap<String, usize> {
    struct Sizes {
        path: Vec<String>,
        out: BTreeMap<String, usize>,
    }
    impl ModuleVisitor for Sizes {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let t = param.val();
            if t.is_require_grad() {
                self.out.insert(self.path.join("."), t.dims().iter().product());
            }
        }
    }
    let mut sizes = Sizes { path: Vec::new(), out: BTreeMap::new() };
    module.visit(&mut sizes);
    sizes.out
}

fn host(t: Tensor<1>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 data after convert")
}

struct Update<'a> {
    optimizer: &'a mut Optimizer,
    grads: &'a mut GradientsParams,
    lr: f64,
    grad_scale: f64,
    path: Vec<String>,
}

/// Elements of a parameter updated at once (16M: a 64 MB f32 temporary).
const UPDATE_CHUNK: usize = 1 << 24;

impl Update<'_> {
    /// One chunk of the parameter at `key` (chunk number `chunk`), as stored: `p` in `dtype`,
    /// its gradient `g`, and under AdamW its moments (`None` before the first step). Returns the
    /// updated chunk in `dtype` and, under AdamW, its moments in the storage dtype.
    fn update_chunk(
        &self,
        key: &str,
        chunk: usize,
        dtype: FloatDType,
        p: Tensor<1>,
        g: Tensor<1>,
        moments: Option<Option<(Tensor<1>, Tensor<1>)>>,
    ) -> (Tensor<1>, Option<(Tensor<1>, Tensor<1>)>) {
        let p = p.cast(FloatDType::F32);
        let mut g = g.cast(FloatDType::F32);
        if self.grad_scale != 1.0 {
            g = g * self.grad_scale;
        }
        let (lr, step, storage) = (self.lr, self.optimizer.step, self.optimizer.storage);
        let decays = decays(&self.path);
        // Chunk 0 draws as an unchunked tensor does; later chunks draw apart.
        let seed = |which: u64| rounding_seed(storage.seed, step, key, which + 4 * chunk as u64);
        let (updated, moments) = match self.optimizer.kind {
            OptimizerKind::Sgd { weight_decay } => {
                if weight_decay != 0.0 && decays {
                    g = g + p.clone() * weight_decay;
                }
                (p - g * lr, None)
            }
            OptimizerKind::AdamW { beta1, beta2, eps, weight_decay } => {
                let (m, v) = match moments.flatten() {
                    Some((m, v)) => (m.cast(FloatDType::F32), v.cast(FloatDType::F32)),
                    None => (g.zeros_like(), g.zeros_like()),
                };
                let p = if weight_decay != 0.0 && decays { p * (1.0 - lr * weight_decay) } else { p };
                // torch: m.lerp_(g, 1 - β1); v.mul_(β2).addcmul_(g, g, 1 - β2).
                let m = m.clone() + (g.clone() - m) * (1.0 - beta1);
                let v = v * beta2 + g.clone() * g * (1.0 - beta2);
                let bias1 = 1.0 - beta1.powi(step as i32);
                let bias2_sqrt = (1.0 - beta2.powi(step as i32)).sqrt();
                let denom = v.clone().sqrt() / bias2_sqrt + eps;
                let out = p - m.clone() / denom * (lr / bias1);
                let m = round_stochastic(m, storage.moments, seed(1));
                let v = round_stochastic(v, storage.moments, seed(2));
                (out, Some((m, v)))
            }
        };
        (round_stochastic(updated, dtype, seed(0)), moments)
    }
}

impl Update<'_> {
    /// `update_chunk` over `chunks` slices of a large flattened parameter (the f32
    /// temporaries of a 152k-token embedding stay a chunk's size). Each updated slice is written
    /// back into the weights and moments it came from: in place where they are uniquely held,
    /// so the step never holds a second full copy of the parameter or its moments.
    fn update_in_chunks(
        &mut self,
        key: &str,
        dtype: FloatDType,
        mut p: Tensor<1>,
        g: Tensor<1>,
        moments: Option<Option<(Tensor<1>, Tensor<1>)>>,
        chunks: usize,
    ) -> Tensor<1> {
        let n = p.dims()[0];
        // The first AdamW step starts from zero moments, as `update_chunk` does without them.
        let mut moments = moments.map(|m| {
            m.unwrap_or_else(|| {
                let m = g.zeros_like().cast(self.optimizer.storage.moments);
                let v = m.zeros_like();
                (m, v)
            })
        });
        for chunk in 0..chunks {
            let range = chunk * UPDATE_CHUNK..n.min((chunk + 1) * UPDATE_CHUNK);
            let slices =
                moments.as_ref().map(|(m, v)| (m.clone().slice(range.clone()), v.clone().slice(range.clone())));
            let (p_chunk, g_chunk) = (p.clone().slice(range.clone()), g.clone().slice(range.clone()));
            let (out, new_moments) = self.update_chunk(key, chunk, dtype, p_chunk, g_chunk, slices.map(Some));
            p = p.slice_assign(range.clone(), out);
            if let (Some((m, v)), Some((new_m, new_v))) = (moments.take(), new_moments) {
                moments = Some((m.slice_assign(range.clone(), new_m), v.slice_assign(range, new_v)));
            }
        }
        if let Some(moments) = moments {
            self.optimizer.moments.insert(key.to_string(), moments);
        }
        p
    }
}

impl ModuleMapper for Update<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let require_grad = tensor.is_require_grad();
        // A tensor re-attached to autodiff gets the default checkpointing strategy; keep the
        // parameter's own (the device's), or the next forward mixes strategies and panics.
        let checkpointing = tensor.gradient_checkpointing_strategy();
        let dims = tensor.dims();
        let dtype = FloatDType::from(tensor.dtype());
        let n: usize = dims.iter().product();
        let key = self.path.join(".");
        let (p, g) = (tensor.inner().reshape([n]), grad.inner().reshape([n]));
        let moments = match self.optimizer.kind {
            OptimizerKind::AdamW { .. } => Some(self.optimizer.moments.remove(&key)),
            OptimizerKind::Sgd { .. } => None,
        };
        let chunks = n.div_ceil(UPDATE_CHUNK).max(1);
        let updated = if chunks == 1 {
            // Owned, not cloned: the old weights and moments are unique, so their arithmetic
            // runs in place and they are freed as the new values are made.
            let (out, new_moments) = self.update_chunk(&key, 0, dtype, p, g, moments);
            if let Some(new_moments) = new_moments {
                self.optimizer.moments.insert(key, new_moments);
            }
            out
        } else {
            self.update_in_chunks(&key, dtype, p, g, moments, chunks)
        };
        let mut updated = Tensor::from_inner(updated.reshape(dims));
        if let Some(strategy) = checkpointing {
            updated = updated.with_gradient_checkpointing_strategy(strategy);
        }
        if require_grad {
            updated = updated.require_grad();
        }
        Param::from_mapped_value(id, updated, mapper)
    }
}

/// `x` (f32) in `dtype`, rounded stochastically: to one of the two `dtype` values around it, the
/// upper with probability `(x − lower) / (upper − lower)`, so the expected result is `x`. The
/// uniform draws come from `device.seed(seed)`; the same `x` and `seed` give the same result.
/// f32 is returned as it is.
///
/// The neighbour of the nearest value `r` on `x`'s side is the nearest value to
/// `r ± |r|·k` with `k = 1.2·2^-(m+1)` (`m` the mantissa bits): that offset lies between 0.6
/// and 1.2 spacings of `r` on either side (the spacing below a power of two is half the one
/// above), so rounding it to nearest lands on the neighbour.
pub fn round_stochastic(x: Tensor<1>, dtype: FloatDType, seed: u64) -> Tensor<1> {
    let mantissa_bits = match dtype {
        FloatDType::BF16 => 7,
        FloatDType::F16 => 10,
        _ => return x,
    };
    let k = 1.2 * f64::powi(2.0, -(mantissa_bits + 1));
    let nearest = x.clone().cast(dtype).cast(FloatDType::F32);
    let residual = x - nearest.clone(); // exact in f32
    let neighbour =
        (nearest.clone() + nearest.clone().abs() * residual.clone().sign() * k).cast(dtype).cast(FloatDType::F32);
    let gap = (neighbour.clone() - nearest.clone()).abs();
    // |residual| ≤ gap / 2; where the gap is 0 (an exact value, or 0) the probability is 0.
    let probability = residual.abs() / gap.clone().clamp_min(f32::MIN_POSITIVE);
    let uniform = {
        let _draw = DRAW.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let device = probability.device();
        device.seed(seed);
        Tensor::<1>::random(probability.dims(), burn::tensor::Distribution::Default, &device)
    };
    nearest.mask_where(uniform.lower(probability), neighbour).cast(dtype)
}

/// Held from seeding the device's generator to the end of the draw (the generator is shared
/// by the process on some backends), so concurrent roundings do not interleave.
static DRAW: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The seed of one rounding: the run's seed, the step, the parameter's path and which of its
/// tensors (0 the parameter, 1 and 2 the moments).
fn rounding_seed(seed: u64, step: u64, path: &str, which: u64) -> u64 {
    // FNV-1a of the path, then SplitMix64 over the combination.
    let path_hash =
        path.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3));
    let mut rng =
        crate::rng::SplitMix64::new(seed ^ path_hash.rotate_left(17) ^ step.wrapping_mul(0x9E37_79B9) ^ which);
    rng.next_u64()
}

/// Whether weight decay applies to the parameter at `path`: as transformers' `Trainer` groups
/// parameters, biases and normalisation weights are exempt.
fn decays(path: &[String]) -> bool {
    !path.iter().any(|seg| {
        let seg = seg.to_ascii_lowercase();
        seg.contains("bias")
            || seg.contains("layernorm")
            || seg.contains("rmsnorm")
            || seg == "norm"
            || seg.ends_with("_norm")
    })
}

/// Gathers the gradients of several devices (burn's [`MultiGradientsParams`]: each parameter's
/// gradients summed, on one of the devices) into one [`GradientsParams`] on `device`, keyed by
/// `module`'s parameters.
pub fn gather_gradients<M: Module>(module: &M, mut grads: MultiGradientsParams, device: &Device) -> GradientsParams {
    struct Gather<'a> {
        from: &'a mut MultiGradientsParams,
        into: GradientsParams,
        device: &'a Device,
    }
    impl ModuleVisitor for Gather<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some((grad, _)) = self.from.remove::<D>(param.id) {
                self.into.register(param.id, grad.to_device(self.device));
            }
        }
    }
    let mut gather = Gather { from: &mut grads, into: GradientsParams::new(), device };
    module.visit(&mut gather);
    gather.into
}

/// The global L2 norm of all gradients of `module` (torch's `clip_grad_norm_` total norm):
/// `sqrt(Σ_tensors ‖g‖²)`, each tensor's norm taken in f32.
pub fn global_grad_norm<M: Module>(module: &M, grads: &GradientsParams) -> f64 {
    struct Norms<'a> {
        grads: &'a GradientsParams,
        squares: Vec<Tensor<1>>,
    }
    impl ModuleVisitor for Norms<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                let n: usize = g.dims().iter().product();
                let g = g.inner().cast(FloatDType::F32).reshape([n]);
                self.squares.push(g.clone().mul(g).sum());
            }
        }
    }
    let mut norms = Norms { grads, squares: Vec::new() };
    module.visit(&mut norms);
    if norms.squares.is_empty() {
        return 0.0;
    }
    // torch takes each tensor's norm, then the norm of those norms.
    let per_tensor = Tensor::cat(norms.squares, 0).sqrt();
    let total = per_tensor.clone().mul(per_tensor).sum().sqrt();
    f64::from(total.into_scalar::<f32>())
}

/// Every float parameter of `module` flattened, by module path.
pub fn parameters_by_path<M: Module>(module: &M) -> BTreeMap<String, Tensor<1>> {
    struct Collect {
        path: Vec<String>,
        out: BTreeMap<String, Tensor<1>>,
    }
    impl ModuleVisitor for Collect {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let t = param.val().inner();
            let n: usize = t.dims().iter().product();
            self.out.insert(self.path.join("."), t.reshape([n]));
        }
    }
    let mut collect = Collect { path: Vec::new(), out: BTreeMap::new() };
    module.visit(&mut collect);
    collect.out
}

/// `module ← α · other + (1 − α) · module` for every parameter `other` has under the same path.
pub fn mix_parameters<M: Module>(module: M, other: &BTreeMap<String, Tensor<1>>, alpha: f64) -> M {
    struct Mix<'a> {
        path: Vec<String>,
        other: &'a BTreeMap<String, Tensor<1>>,
        alpha: f64,
    }
    impl ModuleMapper for Mix<'_> {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (id, tensor, mapper) = param.consume();
            let Some(source) = self.other.get(&self.path.join(".")) else {
                return Param::from_mapped_value(id, tensor, mapper);
            };
            let dims = tensor.dims();
            let source = source.clone().reshape(dims).to_device(&tensor.device()).cast(tensor.dtype());
            let mixed = source * self.alpha + tensor * (1.0 - self.alpha);
            Param::from_mapped_value(id, mixed, mapper)
        }
    }
    module.map(&mut Mix { path: Vec::new(), other, alpha })
}

/// torch's clipping factor for a total norm: `min(1, max_norm / (norm + 1e-6))`.
pub fn clip_factor(total_norm: f64, max_norm: Option<f64>) -> f64 {
    match max_norm {
        Some(max) if max > 0.0 => {
            // torch computes the coefficient in f32.
            let coef = (max as f32) / (total_norm as f32 + 1e-6);
            f64::from(coef.min(1.0))
        }
        _ => 1.0,
    }
}

crate::choice! {
    /// transformers' `lr_scheduler_type`.
    pub enum ScheduleKind("lr_scheduler_type", default = Linear) {
        /// Warm up linearly, then decay linearly to 0 at the last step (the default).
        Linear = "linear",
        /// Warm up linearly, then half a cosine down to 0.
        Cosine = "cosine",
        /// Constant.
        Constant = "constant",
        /// Warm up linearly, then constant.
        ConstantWithWarmup = "constant_with_warmup",
    }
}

/// A learning-rate schedule over `total_steps` optimizer steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// The shape.
    pub kind: ScheduleKind,
    /// The peak learning rate.
    pub learning_rate: f64,
    /// Warm-up steps.
    pub warmup_steps: u64,
    /// Total optimizer steps.
    pub total_steps: u64,
}

impl Schedule {
    /// transformers' warm-up: `warmup_steps` when positive, else `ceil(total × warmup_ratio)`.
    pub fn warmup(total_steps: u64, warmup_steps: u64, warmup_ratio: f64) -> u64 {
        if warmup_steps > 0 { warmup_steps } else { (total_steps as f64 * warmup_ratio).ceil() as u64 }
    }

    /// The learning rate applied at optimizer step `step` (0-based), which transformers logs as
    /// `learning_rate` for step `step + 1`.
    pub fn lr(&self, step: u64) -> f64 {
        let (s, w, t) = (step as f64, self.warmup_steps as f64, self.total_steps as f64);
        let factor = if step < self.warmup_steps && self.kind != ScheduleKind::Constant {
            s / w.max(1.0)
        } else {
            match self.kind {
                ScheduleKind::Constant | ScheduleKind::ConstantWithWarmup => 1.0,
                ScheduleKind::Linear => ((t - s) / (t - w).max(1.0)).max(0.0),
                ScheduleKind::Cosine => {
                    let progress = (s - w) / (t - w).max(1.0);
                    (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
                }
            }
        };
        self.learning_rate * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_match_transformers() {
        // Case a of the TRL reference: linear, 8 steps, lr 1e-2, logged 0.01, 0.00875, ..., 0.00125.
        let linear = Schedule { kind: ScheduleKind::Linear, learning_rate: 1e-2, warmup_steps: 0, total_steps: 8 };
        let lrs: Vec<f64> = (0..8).map(|s| linear.lr(s)).collect();
        for (got, want) in lrs.iter().zip([0.01, 0.00875, 0.0075, 0.00625, 0.005, 0.00375, 0.0025, 0.00125]) {
            assert!((got - want).abs() < 1e-15, "{got} vs {want}");
        }
        // Warm-up 2 of 10: 0, 0.5, then linear from 1 down: (10 - s) / 8.
        let warm = Schedule { kind: ScheduleKind::Linear, learning_rate: 1.0, warmup_steps: 2, total_steps: 10 };
        assert_eq!([warm.lr(0), warm.lr(1), warm.lr(2), warm.lr(6)], [0.0, 0.5, 1.0, 0.5]);
        // Cosine without warm-up: 0.5 (1 + cos(π s / t)); half-way it is 0.5.
        let cos = Schedule { kind: ScheduleKind::Cosine, learning_rate: 1.0, warmup_steps: 0, total_steps: 10 };
        assert!((cos.lr(5) - 0.5).abs() < 1e-12);
        assert_eq!(cos.lr(0), 1.0);
        let cw =
            Schedule { kind: ScheduleKind::ConstantWithWarmup, learning_rate: 2.0, warmup_steps: 4, total_steps: 10 };
        assert_eq!([cw.lr(1), cw.lr(4), cw.lr(9)], [0.5, 2.0, 2.0]);
        // ceil(0.1 × 61) = 7 warm-up steps.
        assert_eq!(Schedule::warmup(61, 0, 0.1), 7);
        assert_eq!(Schedule::warmup(61, 3, 0.1), 3);
    }

    #[test]
    fn weight_decay_skips_biases_and_norms() {
        let path = |p: &str| p.split('.').map(String::from).collect::<Vec<_>>();
        assert!(decays(&path("model.layers.0.mlp.up_proj.weight")));
        assert!(!decays(&path("model.layers.0.self_attn.q_proj.bias")));
        assert!(!decays(&path("model.layers.0.input_layernorm.weight")));
        assert!(!decays(&path("model.norm.weight")));
    }

    #[test]
    fn clipping_factor_is_torchs() {
        assert_eq!(clip_factor(0.5, Some(1.0)), 1.0);
        // 1 / (4 + 1e-6) in f32.
        assert_eq!(clip_factor(4.0, Some(1.0)), f64::from(1.0f32 / (4.0f32 + 1e-6)));
        assert_eq!(clip_factor(4.0, None), 1.0);
        assert_eq!(clip_factor(4.0, Some(0.0)), 1.0, "max_grad_norm 0 disables clipping, as in transformers");
    }

    fn values(t: Tensor<1>) -> Vec<f32> {
        t.cast(FloatDType::F32).into_data().try_to_vec::<f32>().expect("f32")
    }

    #[test]
    fn stochastic_rounding_is_unbiased_between_the_two_neighbours() {
        let device = Device::flex();
        let n = 100_000;
        // (x, its nearest value, the neighbour on x's side), the neighbour's share being
        // (x − nearest) / (neighbour − nearest):
        // 1 + 2^-10 lies an eighth of bf16's spacing 2^-7 above 1;
        // 1 − 2^-12 rounds to 1 and lies a sixteenth of the spacing 2^-8 below 1;
        // the first mirrored;
        // 0.02 + 5e-7 = 163.844 spacings of 2^-13: nearest 164·2^-13, a share of 0.156 towards 163·2^-13;
        // for f16 (spacing 2^-10 above 1), 1 + 2^-12 is a quarter of the way.
        let cases = [
            (1.0 + 2f32.powi(-10), 1.0, 1.0 + 2f32.powi(-7), FloatDType::BF16),
            (1.0 - 2f32.powi(-12), 1.0, 1.0 - 2f32.powi(-8), FloatDType::BF16),
            (-(1.0 + 2f32.powi(-10)), -1.0, -(1.0 + 2f32.powi(-7)), FloatDType::BF16),
            (0.02 + 5e-7, 164.0 * 2f32.powi(-13), 163.0 * 2f32.powi(-13), FloatDType::BF16),
            (1.0 + 2f32.powi(-12), 1.0, 1.0 + 2f32.powi(-10), FloatDType::F16),
        ];
        for (x, nearest, neighbour, dtype) in cases {
            let rounded = values(round_stochastic(Tensor::<1>::full([n], x, &device), dtype, 7));
            assert!(rounded.iter().all(|&r| r == nearest || r == neighbour), "{x}: {:?}", &rounded[..4]);
            let share = rounded.iter().filter(|&&r| r == neighbour).count() as f64 / n as f64;
            let expected = f64::from(x - nearest) / f64::from(neighbour - nearest);
            // 5 standard deviations of a share of n draws at p ≤ 1/4: 5·sqrt(p(1−p)/n) ≤ 0.007.
            assert!((share - expected).abs() < 0.007, "{x}: share {share}, expected {expected}");
        }
        // Representable values stay, 0 stays, f32 is untouched; the same seed rounds alike.
        let exact = Tensor::<1>::from_floats([1.0, -0.5, 0.0, 3.0e-3], &device).cast(FloatDType::BF16);
        let exact32 = values(exact.clone());
        assert_eq!(values(round_stochastic(exact.cast(FloatDType::F32), FloatDType::BF16, 1)), exact32);
        let x = Tensor::<1>::from_floats([0.1f32, 0.2, 0.3], &device);
        assert_eq!(values(round_stochastic(x.clone(), FloatDType::F32, 1)), vec![0.1, 0.2, 0.3]);
        let big = Tensor::<1>::random([1000], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let a = values(round_stochastic(big.clone(), FloatDType::BF16, 5));
        assert_eq!(a, values(round_stochastic(big.clone(), FloatDType::BF16, 5)));
        assert_ne!(a, values(round_stochastic(big, FloatDType::BF16, 6)));
    }

    #[test]
    fn bf16_weights_take_updates_far_below_their_spacing() {
        // 400 SGD steps of 5e-7 on a bf16 weight of 0.02 (spacing 1.2e-4): rounding to nearest
        // would keep 0.02 every step; stochastic rounding moves each weight by 2e-4 on average.
        let device = Device::flex().autodiff();
        let mut lm = crate::test_lm::TinyLm::new(8, 4, &device);
        lm.embed_tokens.weight =
            Param::from_tensor(Tensor::<2>::full([8, 4], 0.02, &device).cast(FloatDType::BF16).require_grad());
        let start = values(lm.embed_tokens.weight.val().inner().reshape([32]));
        let mut optimizer = Optimizer::new(
            OptimizerKind::Sgd { weight_decay: 0.0 },
            OptimizerStorage { moments: FloatDType::F32, seed: 3 },
        );
        for _ in 0..400 {
            let mut grads = GradientsParams::new();
            grads.register(
                lm.embed_tokens.weight.id,
                Tensor::<2>::full([8, 4], 1.0, &device.clone().without_autodiff()).cast(FloatDType::BF16),
            );
            lm = optimizer.step(lm, &mut grads, 5e-7, 1.0);
        }
        let end = values(lm.embed_tokens.weight.val().inner().reshape([32]));
        assert_eq!(lm.embed_tokens.weight.val().dtype(), burn::tensor::DType::BF16, "stays bf16");
        let mean_move = std::iter::zip(&start, &end).map(|(a, b)| f64::from(a - b)).sum::<f64>() / start.len() as f64;
        // 32 weights, each a sum of 400 steps of ±1.2e-4 with p ≈ 5e-7/1.2e-4: the mean move
        // 2e-4 with a standard error of about 2.5e-5.
        assert!((mean_move - 2e-4).abs() < 1e-4, "mean move {mean_move}");
    }

    #[test]
    fn a_parameter_larger_than_a_chunk_is_updated_whole() {
        // 8 × 2,097,153 = 2^24 + 8 elements: two chunks. SGD in f32 is elementwise, so every
        // element must be exactly p − lr·g, across the chunk boundary too.
        let device = Device::flex().autodiff();
        let inner = device.clone().without_autodiff();
        let n = 8 * 2_097_153;
        let mut lm = crate::test_lm::TinyLm::new(8, 4, &device);
        let start = Tensor::<1>::random([n], burn::tensor::Distribution::Normal(0.0, 1.0), &inner);
        let grad = Tensor::<1>::random([n], burn::tensor::Distribution::Normal(0.0, 1.0), &inner);
        lm.embed_tokens.weight =
            Param::from_tensor(Tensor::from_inner(start.clone().reshape([8, 2_097_153])).require_grad());
        let mut grads = GradientsParams::new();
        grads.register(lm.embed_tokens.weight.id, grad.clone().reshape([8, 2_097_153]));
        let mut optimizer = Optimizer::new(OptimizerKind::Sgd { weight_decay: 0.0 }, OptimizerStorage::default());
        let lm = optimizer.step(lm, &mut grads, 0.5, 1.0);
        let got = values(lm.embed_tokens.weight.val().inner().reshape([n]));
        let (p, g) = (values(start), values(grad));
        assert!(got.iter().zip(p.iter().zip(&g)).all(|(x, (p, g))| *x == p - g * 0.5), "an element differs");
    }

    #[test]
    fn adamw_in_chunks_equals_adamw_on_the_same_values_unchunked() {
        // A two-chunk parameter (2^24 + 8 values, its moments written back slice by slice)
        // against the same values held as a one-chunk parameter (2^24) and an 8-value bias.
        // AdamW with no weight decay is elementwise, so two steps must agree bit for bit,
        // the second reading the moments the first wrote back.
        let device = Device::flex().autodiff();
        let inner = device.clone().without_autodiff();
        let (rows, wide) = (8, 2_097_153);
        let n = rows * wide;
        let start = Tensor::<1>::random([n], burn::tensor::Distribution::Normal(0.0, 1.0), &inner);
        let grad = Tensor::<1>::random([n], burn::tensor::Distribution::Normal(0.0, 1.0), &inner);
        let param =
            |t: Tensor<1>, shape: [usize; 2]| Param::from_tensor(Tensor::from_inner(t.reshape(shape)).require_grad());
        let adamw = OptimizerKind::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };

        let mut chunked = crate::test_lm::TinyLm::new(8, 4, &device);
        chunked.embed_tokens.weight = param(start.clone(), [rows, wide]);
        let mut split = crate::test_lm::TinyLm::new(8, 4, &device);
        split.embed_tokens.weight = param(start.clone().slice(0..n - 8), [rows, wide - 1]);
        split.lm_head.bias = Some(Param::from_tensor(Tensor::from_inner(start.clone().slice(n - 8..n)).require_grad()));

        let mut chunked_opt = Optimizer::new(adamw, OptimizerStorage::default());
        let mut split_opt = Optimizer::new(adamw, OptimizerStorage::default());
        for scale in [1.0, -0.5] {
            let g = grad.clone() * scale;
            let mut grads = GradientsParams::new();
            grads.register(chunked.embed_tokens.weight.id, g.clone().reshape([rows, wide]));
            chunked = chunked_opt.step(chunked, &mut grads, 1e-3, 1.0);
            let mut grads = GradientsParams::new();
            grads.register(split.embed_tokens.weight.id, g.clone().slice(0..n - 8).reshape([rows, wide - 1]));
            let bias = split.lm_head.bias.as_ref().expect("bias").id;
            grads.register(bias, g.slice(n - 8..n));
            split = split_opt.step(split, &mut grads, 1e-3, 1.0);
        }
        let mut want = values(split.embed_tokens.weight.val().inner().reshape([n - 8]));
        want.extend(values(split.lm_head.bias.as_ref().expect("bias").val().inner()));
        let got = values(chunked.embed_tokens.weight.val().inner().reshape([n]));
        assert_eq!(got.len(), want.len());
        let differing = got.iter().zip(&want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(differing, 0, "elements differing between the chunked and the unchunked update");
        let moved = got.iter().zip(values(start)).filter(|(a, b)| **a != *b).count();
        assert!(moved > n / 2, "AdamW moved only {moved} of {n} values");
    }

    #[test]
    fn restored_moments_must_fit_the_trained_parameters() {
        let device = Device::flex().autodiff();
        // TinyLm(vocab 8, d 4): embed_tokens.weight 8×4 = 32 values, lm_head weight 4×8 = 32, bias 8.
        let lm = crate::test_lm::TinyLm::new(8, 4, &device);
        let inner = device.clone().without_autodiff();
        let adamw = OptimizerKind::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
        let moments = |sizes: &[(&str, usize)]| -> HostMoments {
            sizes.iter().map(|(p, n)| (p.to_string(), vec![0.0; *n], vec![0.0; *n])).collect()
        };
        let all = [("embed_tokens.weight", 32), ("lm_head.weight", 32), ("lm_head.bias", 8)];
        Optimizer::from_host(adamw, OptimizerStorage::default(), 3, moments(&all), &inner)
            .check_moments(&lm)
            .expect("the model's own moments");
        let resized = [("embed_tokens.weight", 64), ("lm_head.weight", 32), ("lm_head.bias", 8)];
        let err = Optimizer::from_host(adamw, OptimizerStorage::default(), 3, moments(&resized), &inner)
            .check_moments(&lm)
            .expect_err("size");
        assert!(err.to_string().contains("`embed_tokens.weight` have 64 values, the model's parameter 32"), "{err}");
        let foreign = [("embed_tokens.weight", 32), ("lm_head.weight", 32), ("lm_head.bias", 8), ("lora_a", 4)];
        let err = Optimizer::from_host(adamw, OptimizerStorage::default(), 3, moments(&foreign), &inner)
            .check_moments(&lm)
            .expect_err("extra");
        assert!(err.to_string().contains("moments for `lora_a`, which the model does not train"), "{err}");
        let err = Optimizer::from_host(adamw, OptimizerStorage::default(), 3, moments(&all[..2]), &inner)
            .check_moments(&lm)
            .expect_err("missing");
        assert!(err.to_string().contains("no moments for `lm_head.bias`"), "{err}");
        // SGD keeps no moments; AdamW before its first step has none yet.
        Optimizer::from_host(
            OptimizerKind::Sgd { weight_decay: 0.0 },
            OptimizerStorage::default(),
            3,
            Vec::new(),
            &inner,
        )
        .check_moments(&lm)
        .expect("SGD");
        Optimizer::from_host(adamw, OptimizerStorage::default(), 0, Vec::new(), &inner)
            .check_moments(&lm)
            .expect("no step yet");
    }
}
