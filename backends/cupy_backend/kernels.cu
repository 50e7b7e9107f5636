// Fused CUDA kernels for the CuPy backend (see kernels.py for why each one pays).
//
// The loader prepends `typedef float T;` or `typedef double T;`. Every kernel is a
// grid-stride loop over `n` outputs, one output element per index (gather form: no
// atomics, no shared memory, no races), and takes `n` as its first argument.
// Layout: NHWC, C-contiguous. Arithmetic follows reference/primitives.py operation by
// operation; compiled with --fmad=false the results equal NumPy's bit for bit.
// Only plain C-style code here (no CUDA library calls): the same text also compiles with g++ for the CPU emulator
// (tests/cuda_emulator.py).

#define GRID_STRIDE_LOOP(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (long long)blockDim.x * gridDim.x)

// The (n, h, w, c) coordinates of flat index i of a C-contiguous (N, H, W, C) array.
struct nhwc { long long b, h, w, c; };
__device__ inline nhwc unravel_nhwc(long long i, long long H, long long W, long long C) {
    nhwc p;
    p.c = i % C; i /= C;
    p.w = i % W; i /= W;
    p.h = i % H;
    p.b = i / H;
    return p;
}

// cols (N*Ho*Wo, k*k*C), index order (n, ho, wo, ki, kj, c) as _im2col; taps that fall
// in the zero border read 0 (the padded copy of x is never materialised).
extern "C" __global__ void im2col(long long n, const T* x, T* cols,
                                  long long H, long long W, long long C,
                                  long long Ho, long long Wo, long long k,
                                  long long stride, long long pad) {
    GRID_STRIDE_LOOP(i, n) {
        long long t = i;
        long long c = t % C; t /= C;
        long long kj = t % k; t /= k;
        long long ki = t % k; t /= k;
        long long wo = t % Wo; t /= Wo;
        long long ho = t % Ho;
        long long b = t / Ho;
        long long h = ho * stride + ki - pad;
        long long w = wo * stride + kj - pad;
        int inside = h >= 0 && h < H && w >= 0 && w < W;
        cols[i] = inside ? x[((b * H + h) * W + w) * C + c] : (T)0;
    }
}

// dx (N,H,W,C) of the unpadded x: the sum of dcols over every (ho,wo,ki,kj) tap that
// read x[b,h,w,c], accumulated in conv2d_vjp's order (ki outer, kj inner).
extern "C" __global__ void col2im(long long n, const T* dcols, T* dx,
                                  long long H, long long W, long long C,
                                  long long Ho, long long Wo, long long k,
                                  long long stride, long long pad) {
    GRID_STRIDE_LOOP(i, n) {
        nhwc p = unravel_nhwc(i, H, W, C);
        long long b = p.b, c = p.c;
        long long hp = p.h + pad, wp = p.w + pad;  // coordinates in the padded input
        T acc = (T)0;
        for (long long ki = 0; ki < k; ++ki) {
            long long dh = hp - ki;
            if (dh < 0 || dh % stride != 0 || dh / stride >= Ho) continue;
            long long ho = dh / stride;
            for (long long kj = 0; kj < k; ++kj) {
                long long dw = wp - kj;
                if (dw < 0 || dw % stride != 0 || dw / stride >= Wo) continue;
                long long wo = dw / stride;
                acc += dcols[((((b * Ho + ho) * Wo + wo) * k + ki) * k + kj) * C + c];
            }
        }
        dx[i] = acc;
    }
}

// Batch norm forward, one pass: xhat = (x - mu) * inv, out = xhat * gamma + beta.
extern "C" __global__ void bn_normalize(long long n, const T* x, const T* mu,
                                        const T* inv, const T* gamma, const T* beta,
                                        T* xhat, T* out, long long C) {
    GRID_STRIDE_LOOP(i, n) {
        long long c = i % C;
        T xh = x[i] - mu[c];
        xh = xh * inv[c];
        xhat[i] = xh;
        T o = xh * gamma[c];
        out[i] = o + beta[c];
    }
}

// Batch norm backward (training), batchnorm_vjp's order:
// dx = (g - (xhat * (dgamma/m) + dbeta/m)) * (gamma * inv).
extern "C" __global__ void bn_backward_dx(long long n, const T* g, const T* xhat,
                                          const T* dgamma, const T* dbeta,
                                          const T* gamma, const T* inv, T* dx,
                                          long long C, T m) {
    GRID_STRIDE_LOOP(i, n) {
        long long c = i % C;
        T t = xhat[i] * (dgamma[c] / m);
        t = t + dbeta[c] / m;
        t = g[i] - t;
        dx[i] = t * (gamma[c] * inv[c]);
    }
}

// y = maximum(x, 0) (NaN propagates, as xp.maximum) and the mask y > 0, one pass.
extern "C" __global__ void relu(long long n, const T* x, T* y, bool* mask) {
    GRID_STRIDE_LOOP(i, n) {
        T v = x[i];
        int positive = v > (T)0;
        y[i] = (positive || v != v) ? v : (T)0;
        mask[i] = positive;
    }
}

// Max pool, window = stride = k, over the full windows only. Scans the window in
// row-major order; the first maximum wins, and the first NaN wins over any number
// (argmax's rule), so value and arg equal primitives.maxpool's.
extern "C" __global__ void maxpool(long long n, const T* x, T* y, long long* arg,
                                   long long H, long long W, long long C,
                                   long long Ho, long long Wo, long long k) {
    GRID_STRIDE_LOOP(i, n) {
        nhwc o = unravel_nhwc(i, Ho, Wo, C);
        const T* base = x + ((o.b * H + o.h * k) * W + o.w * k) * C + o.c;
        T best = base[0];
        long long best_tap = 0;
        for (long long ki = 0; ki < k; ++ki) {
            for (long long kj = 0; kj < k; ++kj) {
                T v = base[(ki * W + kj) * C];
                if (best == best && (v > best || v != v)) {
                    best = v;
                    best_tap = ki * k + kj;
                }
            }
        }
        y[i] = best;
        arg[i] = best_tap;
    }
}

// Max pool backward, per input element: g of its window times (tap == arg), the same
// product as maxpool_vjp's onehot * g; rows/cols outside every full window get 0.
extern "C" __global__ void maxpool_backward(long long n, const T* g, const long long* arg,
                                            T* dx, long long H, long long W, long long C,
                                            long long Ho, long long Wo, long long k) {
    GRID_STRIDE_LOOP(i, n) {
        nhwc p = unravel_nhwc(i, H, W, C);
        long long ho = p.h / k, wo = p.w / k;
        if (ho >= Ho || wo >= Wo) {
            dx[i] = (T)0;
            continue;
        }
        long long o = ((p.b * Ho + ho) * Wo + wo) * C + p.c;
        T hit = arg[o] == (p.h % k) * k + (p.w % k) ? (T)1 : (T)0;
        dx[i] = hit * g[o];
    }
}
