// G2PO advantage stages for very large batches (SPEC section 3), from host-computed ids.
//
// Compiled at run time by NVRTC (no headers), see src/cuda/mod.rs.
//
// Segments (the rows of one node, the rows of one task group) arrive in CSR form built on the
// host: `*_rows` lists row indices segment by segment (stable, i.e. in row order within a
// segment) and `*_offsets[s]..*_offsets[s+1]` delimits segment s. One warp owns one segment and
// its lanes stride over the rows; sums use a fixed-order shuffle tree in double, so every result
// is reproducible bit for bit and independent of the launch configuration of other segments.

#define WARP 32

// (x - mean) / (sd + eps) under mean_std_norm, x - mean under mean_norm. With eps = 0 and no
// spread every x equals the mean, and the result is 0 rather than 0/0 (as in the CPU engine).
__device__ double standardise(double x, double mean, double sd, double eps, int mean_norm) {
    const double v = x - mean;
    if (mean_norm) return v;
    const double scale = sd + eps;
    return scale > 0.0 ? v / scale : 0.0;
}

__device__ double warp_sum(double v) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
    return __shfl_sync(0xffffffffu, v, 0);
}

// Mean and unbiased standard deviation of vals[rows[b..e]] (two passes: mean first, then the
// squared deviations, which is better conditioned than sum of squares).
__device__ void seg_mean_sd(const float* vals, const unsigned int* rows, unsigned int b,
                            unsigned int e, int lane, double* mean, double* sd) {
    double s = 0.0;
    for (unsigned int i = b + lane; i < e; i += WARP) s += (double)vals[rows[i]];
    s = warp_sum(s);
    const double cnt = (double)(e - b);
    const double m = s / cnt;
    double q = 0.0;
    for (unsigned int i = b + lane; i < e; i += WARP) {
        const double dv = (double)vals[rows[i]] - m;
        q += dv * dv;
    }
    q = warp_sum(q);
    *mean = m;
    *sd = (e - b > 1) ? sqrt(q / (cnt - 1.0)) : 0.0;
}

// Stage 1: node value V(k) = mean of the visit values of node k.
extern "C" __global__ void g2po_node_value(const float* __restrict__ visit_value,
                                           const unsigned int* __restrict__ node_rows,
                                           const unsigned int* __restrict__ node_offsets,
                                           unsigned int num_nodes, float* __restrict__ node_value) {
    const unsigned int k = (blockIdx.x * blockDim.x + threadIdx.x) / WARP;
    const int lane = threadIdx.x & (WARP - 1);
    if (k >= num_nodes) return;  // whole warp exits together: k is uniform in the warp
    const unsigned int b = node_offsets[k], e = node_offsets[k + 1];
    double s = 0.0;
    for (unsigned int i = b + lane; i < e; i += WARP) s += (double)visit_value[node_rows[i]];
    s = warp_sum(s);
    if (lane == 0) node_value[k] = (e > b) ? (float)(s / (double)(e - b)) : 0.0f;
}

// Stage 2 (one thread per row): x = V(next) - p*invalid and the TD error d = V(next) - V(node);
// a negative next id is a terminal whose value is the row's episode reward.
extern "C" __global__ void g2po_row_terms(const unsigned int* __restrict__ node,
                                          const int* __restrict__ next_node,
                                          const float* __restrict__ terminal_value,
                                          const unsigned char* __restrict__ invalid,
                                          const float* __restrict__ node_value, unsigned int n,
                                          float penalty, float* __restrict__ x,
                                          float* __restrict__ td) {
    const unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const int nx = next_node[i];
    const double v_next = nx >= 0 ? (double)node_value[nx] : (double)terminal_value[i];
    x[i] = (float)(v_next - (invalid[i] ? (double)penalty : 0.0));
    td[i] = (float)(v_next - (double)node_value[node[i]]);
}

// Stage 3 (warp per node): node-centric term, x normalised among the rows of the node; a node
// with a single visit gets 0.
extern "C" __global__ void g2po_node_centric(const float* __restrict__ x,
                                             const unsigned int* __restrict__ node_rows,
                                             const unsigned int* __restrict__ node_offsets,
                                             unsigned int num_nodes, float epsilon, int mean_norm,
                                             float* __restrict__ node_centric) {
    const unsigned int k = (blockIdx.x * blockDim.x + threadIdx.x) / WARP;
    const int lane = threadIdx.x & (WARP - 1);
    if (k >= num_nodes) return;
    const unsigned int b = node_offsets[k], e = node_offsets[k + 1];
    double m, sd;
    seg_mean_sd(x, node_rows, b, e, lane, &m, &sd);
    for (unsigned int i = b + lane; i < e; i += WARP) {
        const unsigned int r = node_rows[i];
        const double v = (e - b > 1) ? standardise((double)x[r], m, sd, (double)epsilon, mean_norm) : 0.0;
        node_centric[r] = (float)v;
    }
}

// Stage 4 (warp per task group): edge-centric term (TD error normalised over the group; a group
// of one gets 0), episode term (score normalised over the group; a group of one uses mean 0 and
// std 1) and the final advantage A = episode + w * (node_centric + edge_centric).
extern "C" __global__ void g2po_group_terms(const float* __restrict__ td,
                                            const float* __restrict__ score,
                                            const float* __restrict__ node_centric,
                                            const unsigned int* __restrict__ group_rows,
                                            const unsigned int* __restrict__ group_offsets,
                                            unsigned int num_groups, float epsilon, int mean_norm,
                                            float weight, float* __restrict__ edge_centric,
                                            float* __restrict__ episode,
                                            float* __restrict__ advantage) {
    const unsigned int g = (blockIdx.x * blockDim.x + threadIdx.x) / WARP;
    const int lane = threadIdx.x & (WARP - 1);
    if (g >= num_groups) return;
    const unsigned int b = group_offsets[g], e = group_offsets[g + 1];
    const bool single = (e - b) <= 1;
    double dm, dsd, sm, ssd;
    seg_mean_sd(td, group_rows, b, e, lane, &dm, &dsd);
    seg_mean_sd(score, group_rows, b, e, lane, &sm, &ssd);
    if (single) {
        sm = 0.0;
        ssd = 1.0;
    }
    for (unsigned int i = b + lane; i < e; i += WARP) {
        const unsigned int r = group_rows[i];
        const double ec = single ? 0.0 : standardise((double)td[r], dm, dsd, (double)epsilon, mean_norm);
        const double ep = standardise((double)score[r], sm, ssd, (double)epsilon, mean_norm);
        const float ecf = (float)ec, epf = (float)ep;
        edge_centric[r] = ecf;
        episode[r] = epf;
        advantage[r] = (float)((double)epf + (double)weight * ((double)node_centric[r] + (double)ecf));
    }
}

// Stage 5 (warp per row): broadcast each row's advantage to its response tokens, the flat
// ragged array token_offsets[r]..token_offsets[r+1]; lanes write consecutive tokens so the
// stores coalesce.
extern "C" __global__ void g2po_broadcast(const float* __restrict__ advantage,
                                          const unsigned long long* __restrict__ token_offsets,
                                          unsigned int n, float* __restrict__ token_advantage) {
    const unsigned int r = (blockIdx.x * blockDim.x + threadIdx.x) / WARP;
    const int lane = threadIdx.x & (WARP - 1);
    if (r >= n) return;
    const float a = advantage[r];
    const unsigned long long b = token_offsets[r], e = token_offsets[r + 1];
    for (unsigned long long t = b + lane; t < e; t += WARP) token_advantage[t] = a;
}
