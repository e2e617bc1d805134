// Fused GRPO policy loss, forward and backward in one pass (SPEC section 4, verl semantics).
//
// Compiled at run time by NVRTC (no headers: only builtins), see src/cuda/mod.rs.
//
// Pipeline (all reductions are fixed-order, so results are bitwise reproducible run to run and
// independent of the device's SM count):
//   1. grpo_row_counts   : one block per row, sum of the mask of that row (double).
//   2. grpo_total_count  : one block, sum of the per-row counts in row order.
//   3. grpo_loss_fwd_bwd : grid-stride over tokens; reads each input once, writes d loss/d logp
//                          once, and leaves NSTAT per-block partial sums.
//   4. grpo_reduce_partials : one block, sums the per-block partials in block order.
// Step 1 re-reads the mask (4 of ~28 bytes per token) so that the aggregation weight of every
// token is known when its gradient is written, which avoids a second pass over the gradient.

#define NSTAT 9
// Partial-sum slots (weighted = multiplied by the token's aggregation weight).
#define S_LOSS 0      // weighted total per-token loss
#define S_PG 1        // weighted policy-gradient term
#define S_KL 2        // weighted KL term (unscaled by beta)
#define S_ENT_AGG 3   // weighted entropy
#define S_CLIP 4      // masked tokens whose clipped term was active
#define S_DUAL 5      // negative-advantage masked tokens where the dual clip was active
#define S_NEG 6       // negative-advantage masked tokens (dual clip enabled only)
#define S_APPROX 7    // sum of mask * (logp_old - logp), log-ratio clamped to [-20, 20]
#define S_ENT 8       // sum of mask * entropy

// Aggregation modes (must match src/cuda/loss.rs).
#define AGG_TOKEN_MEAN 0
#define AGG_SEQ_MEAN_TOKEN_SUM 1
#define AGG_SEQ_MEAN_TOKEN_MEAN 2
#define AGG_SEQ_MEAN_TOKEN_SUM_NORM 3

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
    for (unsigned int j = threadIdx.x; j < max_len; j += blockDim.x) s += (double)m[j];
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) row_count[r] = s;
}

extern "C" __global__ void grpo_total_count(const double* __restrict__ row_count,
                                            unsigned int rows, double* __restrict__ total) {
    __shared__ double scratch[BLOCK / 32];
    double s = 0.0;
    for (unsigned int r = threadIdx.x; r < rows; r += blockDim.x) s += row_count[r];
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) total[0] = s;
}

extern "C" __global__ void grpo_loss_fwd_bwd(
    const float* __restrict__ logp, const float* __restrict__ logp_old,
    const float* __restrict__ logp_ref, const float* __restrict__ adv,
    const float* __restrict__ entropy, const float* __restrict__ mask,
    const double* __restrict__ row_count, const double* __restrict__ total_count,
    unsigned int rows, unsigned int max_len,
    float clip_low, float clip_high, float dual_c, int use_dual, int kl_mode, float beta,
    float entropy_coef, int has_entropy, int agg, float norm_length,
    float* __restrict__ grad, double* __restrict__ partials) {
    __shared__ double scratch[BLOCK / 32];
    double acc[NSTAT];
    for (int i = 0; i < NSTAT; ++i) acc[i] = 0.0;
    const unsigned long long n = (unsigned long long)rows * max_len;
    const double total = total_count[0];
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long idx = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         idx < n; idx += stride) {
        const float m = mask[idx];
        if (m == 0.0f) {
            grad[idx] = 0.0f;
            continue;
        }
        const unsigned int r = (unsigned int)(idx / max_len);
        // Aggregation weight of this token: the loss is sum_t weight_t * mask_t * L_t.
        double w;
        if (agg == AGG_TOKEN_MEAN) {
            w = 1.0 / total;
        } else if (agg == AGG_SEQ_MEAN_TOKEN_SUM) {
            w = 1.0 / (double)rows;
        } else if (agg == AGG_SEQ_MEAN_TOKEN_MEAN) {
            w = 1.0 / ((double)rows * row_count[r]);
        } else {
            w = 1.0 / ((double)rows * (double)norm_length);
        }
        const float lp = logp[idx];
        const float a = adv[idx];
        // Ratio with the log-ratio clamped to [-20, 20] (the clamp passes no gradient outside).
        const float raw = lp - logp_old[idx];
        const float d = fminf(fmaxf(raw, -20.0f), 20.0f);
        const float d_pass = (raw >= -20.0f && raw <= 20.0f) ? 1.0f : 0.0f;
        const float rho = expf(d);
        const float lo = 1.0f - clip_low, hi = 1.0f + clip_high;
        const float rho_c = fminf(fmaxf(rho, lo), hi);
        const float pg1 = -a * rho;
        const float pg2 = -a * rho_c;
        const float clip1 = fmaxf(pg1, pg2);
        const bool clipped = pg2 > pg1;
        // d pg / d logp: -A*rho through the unclipped branch; zero when the clipped branch is
        // active (the clamp is flat there).
        float dpg = clipped ? 0.0f : -a * rho * d_pass;
        float pg = clip1;
        bool dual_active = false;
        if (use_dual && a < 0.0f) {
            const float pg3 = -a * dual_c;
            if (clip1 > pg3) {
                dual_active = true;
                pg = pg3;
                dpg = 0.0f;
            }
            acc[S_NEG] += (double)m;
        }
        float kl = 0.0f, dkl = 0.0f;
        if (kl_mode == 1) {
            kl = lp - logp_ref[idx];
            dkl = 1.0f;
        } else if (kl_mode == 2) {
            const float diff = lp - logp_ref[idx];
            kl = 0.5f * diff * diff;
            dkl = diff;
        } else if (kl_mode == 3) {
            const float qr = logp_ref[idx] - lp;
            const float q = fminf(fmaxf(qr, -20.0f), 20.0f);
            const float q_pass = (qr >= -20.0f && qr <= 20.0f) ? 1.0f : 0.0f;
            const float eq = expf(q);
            const float k = eq - q - 1.0f;
            kl = fminf(fmaxf(k, -10.0f), 10.0f);
            const float k_pass = (k >= -10.0f && k <= 10.0f) ? 1.0f : 0.0f;
            // dk/dlogp = (exp(q) - 1) * dq/dlogp, dq/dlogp = -1.
            dkl = -(eq - 1.0f) * q_pass * k_pass;
        }
        const float ent = has_entropy ? entropy[idx] : 0.0f;
        const float tok = pg + beta * kl - entropy_coef * ent;
        const double wm = w * (double)m;
        grad[idx] = (float)(wm * (double)(dpg + beta * dkl));
        acc[S_LOSS] += wm * (double)tok;
        acc[S_PG] += wm * (double)pg;
        acc[S_KL] += wm * (double)kl;
        acc[S_ENT_AGG] += wm * (double)ent;
        acc[S_CLIP] += clipped ? (double)m : 0.0;
        acc[S_DUAL] += dual_active ? (double)m : 0.0;
        acc[S_APPROX] += (double)m * (double)(-d);
        acc[S_ENT] += (double)m * (double)ent;
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
