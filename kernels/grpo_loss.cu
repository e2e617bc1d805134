// Fused GRPO policy loss, forward and backward in one pass (SPEC section 4, verl semantics).
//
// Compiled at run time by NVRTC (no headers: only builtins), see src/cuda/mod.rs.
//
// Pipeline (all reductions are fixed-order, so results are bitwise reproducible run to run and
// independent of the device's SM count):
//   1. grpo_row_counts   : one block per row, sum of the mask of that row (double).
//   2. grpo_total_count  : one block, masked tokens and live rows (rows with a masked token).
//   3. grpo_loss_fwd_bwd : grid-stride over tokens; reads each input once, writes d loss/d logp
//                          once, and leaves NSTAT per-block partial sums.
//   4. grpo_reduce_partials : one block, sums the per-block partials in block order.
// Step 1 re-reads the mask (4 of ~28 bytes per token) so that the aggregation weight of every
// token is known when its gradient is written, which avoids a second pass over the gradient.

#define NSTAT 8
// Partial-sum slots (weighted = multiplied by the token's aggregation weight). The total loss is
// assembled on the host from slots 0-2, exactly as the CPU reference does.
#define S_PG 0        // weighted policy-gradient term
#define S_KL 1        // weighted KL term (unscaled by beta)
#define S_ENT_AGG 2   // weighted entropy
#define S_CLIP 3      // masked tokens whose clipped term was active
#define S_DUAL 4      // masked tokens where the dual clip was active (divided by ALL masked tokens)
#define S_APPROX 5    // sum of mask * (logp_old - logp), log-ratio clamped to [-20, 20]
#define S_ENT 6       // sum of mask * entropy
#define S_APPROX_K3 7 // sum of mask * ((rho - 1) - log rho), the k3 approximate KL to the sampler

// Aggregation modes (must match src/cuda/loss.rs).
#define AGG_TOKEN_MEAN 0
#define AGG_SEQ_MEAN_TOKEN_SUM 1
#define AGG_SEQ_MEAN_TOKEN_MEAN 2
#define AGG_SEQ_MEAN_TOKEN_SUM_NORM 3

// Bounds shared with crate::loss (LOG_RATIO_CLAMP, K3_CLAMP).
#define LOG_RATIO_CLAMP 20.0
#define K3_CLAMP 10.0

#define BLOCK 256

// Fixed-order block sum of one double; every thread gets the result. `scratch` holds BLOCK/32.
__device__ double block_sum(double v, double* scratch) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    double total = 0.0;
    int nwarps = (blockDim.x + 31) >> 5;
    for (int w = 0; w < nwarps; ++w) total += scratch[w];  // same order in every thread
    __syncthreads();
    return total;
}

extern "C" __global__ void grpo_row_counts(const float* __restrict__ mask, unsigned int rows,
                                           unsigned int max_len, double* __restrict__ row_count) {
    __shared__ double scratch[BLOCK / 32];
    unsigned int r = blockIdx.x;
    if (r >= rows) return;
    const float* m = mask + (unsigned long long)r * max_len;
    double s = 0.0;
    // Counts entries equal to 1 (what the loss kernel treats as masked), not the sum of the mask.
    for (unsigned int j = threadIdx.x; j < max_len; j += blockDim.x) s += m[j] == 1.0f ? 1.0 : 0.0;
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) row_count[r] = s;
}

// total[0] = masked tokens, total[1] = rows with at least one masked token ("live" rows: the
// sequence-mean modes average over those only, as crate::loss does).
extern "C" __global__ void grpo_total_count(const double* __restrict__ row_count,
                                            unsigned int rows, double* __restrict__ total) {
    __shared__ double scratch[BLOCK / 32];
    double s = 0.0, live = 0.0;
    for (unsigned int r = threadIdx.x; r < rows; r += blockDim.x) {
        s += row_count[r];
        live += row_count[r] > 0.0 ? 1.0 : 0.0;
    }
    s = block_sum(s, scratch);
    live = block_sum(live, scratch);
    if (threadIdx.x == 0) {
        total[0] = s;
        total[1] = live;
    }
}

// Per-token arithmetic is in double, like the CPU reference, so that both take the same branch
// at every kink (clip edges, clamps) and agree to the last bits of the f32 gradient; the kernel
// stays memory-bound on data-centre GPUs, whose FP64 rate is half the FP32 rate.
extern "C" __global__ void grpo_loss_fwd_bwd(
    const float* __restrict__ logp, const float* __restrict__ logp_old,
    const float* __restrict__ logp_ref, const float* __restrict__ adv,
    const float* __restrict__ entropy, const float* __restrict__ mask,
    const double* __restrict__ row_count, const double* __restrict__ total_count,
    unsigned int rows, unsigned int max_len,
    double clip_low, double clip_high, double dual_c, int use_dual, int kl_mode, double beta,
    int has_entropy, int agg, double norm_length,
    float* __restrict__ grad, double* __restrict__ partials) {
    __shared__ double scratch[BLOCK / 32];
    double acc[NSTAT];
    for (int i = 0; i < NSTAT; ++i) acc[i] = 0.0;
    const unsigned long long n = (unsigned long long)rows * max_len;
    const double total = total_count[0];
    const double live = total_count[1];
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long idx = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         idx < n; idx += stride) {
        if (mask[idx] != 1.0f) {  // the host checked the mask is 0/1
            grad[idx] = 0.0f;
            continue;
        }
        const unsigned int r = (unsigned int)(idx / max_len);
        // Aggregation weight of this token: the loss is sum_t w_t * L_t over masked tokens.
        double w;
        if (agg == AGG_TOKEN_MEAN) {
            w = 1.0 / total;
        } else if (agg == AGG_SEQ_MEAN_TOKEN_SUM) {
            w = 1.0 / live;
        } else if (agg == AGG_SEQ_MEAN_TOKEN_MEAN) {
            w = 1.0 / (live * row_count[r]);
        } else {
            // Dr. GRPO (verl): sum over rows of the token sums / a fixed length; no mean over rows.
            w = 1.0 / norm_length;
        }
        const double lp = (double)logp[idx];
        const double a = (double)adv[idx];
        // Ratio with the log-ratio clamped to [-20, 20]; the gradient passes on the boundary
        // itself (as torch's clamp does) and is zero outside.
        const double raw = lp - (double)logp_old[idx];
        const double d = fmin(fmax(raw, -LOG_RATIO_CLAMP), LOG_RATIO_CLAMP);
        const double rho = exp(d);
        const double d_rho = fabs(raw) <= LOG_RATIO_CLAMP ? rho : 0.0;
        const double rho_c = fmin(fmax(rho, 1.0 - clip_low), 1.0 + clip_high);
        const double pg1 = -a * rho;
        const double pg2 = -a * rho_c;
        // verl: max(pg1, pg2); the clipped branch (flat in logp) is active only where strictly
        // larger, which is also what the clip fraction counts.
        const bool clipped = pg2 > pg1;
        double pg = clipped ? pg2 : pg1;
        double dpg = clipped ? 0.0 : -a * d_rho;
        bool dual_active = false;
        if (use_dual && a < 0.0) {
            const double pg3 = -a * dual_c;
            if (pg > pg3) {
                dual_active = true;
                pg = pg3;
                dpg = 0.0;
            }
        }
        double kl = 0.0, dkl = 0.0;
        if (kl_mode == 1) {
            kl = lp - (double)logp_ref[idx];
            dkl = 1.0;
        } else if (kl_mode == 2) {
            const double diff = lp - (double)logp_ref[idx];
            kl = 0.5 * diff * diff;
            dkl = diff;
        } else if (kl_mode == 3) {
            const double qr = (double)logp_ref[idx] - lp;
            const double q = fmin(fmax(qr, -LOG_RATIO_CLAMP), LOG_RATIO_CLAMP);
            const double eq = exp(q);
            const double k = eq - q - 1.0;
            kl = fmin(fmax(k, -K3_CLAMP), K3_CLAMP);
            // d/dlogp (e^q - q - 1) = 1 - e^q, unless a clamp holds the value.
            const bool active = fabs(qr) <= LOG_RATIO_CLAMP && fabs(k) <= K3_CLAMP;
            dkl = active ? 1.0 - eq : 0.0;
        }
        const double ent = has_entropy ? (double)entropy[idx] : 0.0;
        grad[idx] = (float)(w * (dpg + beta * dkl));
        acc[S_PG] += w * pg;
        acc[S_KL] += w * kl;
        acc[S_ENT_AGG] += w * ent;
        acc[S_CLIP] += clipped ? 1.0 : 0.0;
        acc[S_DUAL] += dual_active ? 1.0 : 0.0;
        acc[S_APPROX] -= d;
        acc[S_ENT] += ent;
        acc[S_APPROX_K3] += (rho - 1.0) - d;
    }
    for (int i = 0; i < NSTAT; ++i) {
        const double s = block_sum(acc[i], scratch);
        if (threadIdx.x == 0) partials[(unsigned long long)blockIdx.x * NSTAT + i] = s;
    }
}

extern "C" __global__ void grpo_reduce_partials(const double* __restrict__ partials,
                                                unsigned int nblocks, double* __restrict__ out) {
    __shared__ double scratch[BLOCK / 32];
    for (int i = 0; i < NSTAT; ++i) {
        double s = 0.0;
        for (unsigned int b = threadIdx.x; b < nblocks; b += blockDim.x)
            s += partials[(unsigned long long)b * NSTAT + i];
        s = block_sum(s, scratch);
        if (threadIdx.x == 0) out[i] = s;
    }
}
