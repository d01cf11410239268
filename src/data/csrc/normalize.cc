// The training batch's normalisation: uint8 HWC RGB images -> float32 NCHW, (x - mean[c]) / std[c]
// per channel, the numbers of the engine's HWC2CHW + Normalize (float32 subtraction, then division).
// Pixels are split into channels in short runs so that the arithmetic loops vectorise. Called
// through ctypes, without Python's lock held.
#include <cstdint>

extern "C" {

// images: n pointers to h x w x 3 uint8 images; out: n x 3 x h x w float32.
void convmlp_normalize_batch(const uint8_t* const* images, int n, int h, int w, const float* mean, const float* std,
                             float* out) {
  const int64_t plane = static_cast<int64_t>(h) * w;
  const int run = 512;
  float channel[3][run];
  for (int i = 0; i < n; ++i) {
    const uint8_t* image = images[i];
    float* o = out + static_cast<int64_t>(i) * 3 * plane;
    for (int64_t start = 0; start < plane; start += run) {
      const int count = static_cast<int>(plane - start < run ? plane - start : run);
      const uint8_t* p = image + 3 * start;
      for (int k = 0; k < count; ++k) {
        channel[0][k] = static_cast<float>(p[3 * k]);
        channel[1][k] = static_cast<float>(p[3 * k + 1]);
        channel[2][k] = static_cast<float>(p[3 * k + 2]);
      }
      for (int c = 0; c < 3; ++c) {
        const float m = mean[c], s = std[c];
        float* dst = o + c * plane + start;
        const float* src = channel[c];
        for (int k = 0; k < count; ++k) dst[k] = (src[k] - m) / s;
      }
    }
  }
}

}  // extern "C"
