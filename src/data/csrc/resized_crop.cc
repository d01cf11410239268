// RandomResizedCrop of an 8-bit RGB image as timm's and torchvision's transforms compute it on a
// Pillow image: the crop box drawn as their get_params draws it (ten tries at an area fraction and
// a log-uniform aspect ratio, then the centre crop clamped to the ratio range), the box cut out, and
// Pillow's bicubic resampling of that crop (separable, antialiased when shrinking, 22-bit fixed-point
// coefficients, horizontal pass first, each pass rounded to 8 bits): the same pixels as
// ``Image.crop(box).resize(size, Image.BICUBIC)``. The draws come from a counter-based generator
// keyed by the caller, so a record's crop does not depend on which thread computes it. Called through
// ctypes, without Python's lock held.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;

double bicubic(double x) {
  const double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
  return 0.0;
}

// Pillow's precompute_coeffs + normalize_coeffs_8bpc for one axis: out_size windows over
// [in0, in1) of an axis of in_size pixels. Returns the window length; first/count per output pixel.
int coefficients(int in_size, double in0, double in1, int out_size, std::vector<int>* first,
                 std::vector<int>* count, std::vector<int32_t>* fixed) {
  const double support_1 = 2.0;  // bicubic
  double scale = (in1 - in0) / out_size;
  double filterscale = scale < 1.0 ? 1.0 : scale;
  double support = support_1 * filterscale;
  int ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  std::vector<double> kk(static_cast<size_t>(out_size) * ksize, 0.0);
  first->assign(out_size, 0);
  count->assign(out_size, 0);
  for (int xx = 0; xx < out_size; ++xx) {
    double center = in0 + (xx + 0.5) * scale;
    double ww = 0.0, ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double* k = &kk[static_cast<size_t>(xx) * ksize];
    for (int x = 0; x < xmax; ++x) {
      double w = bicubic((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (int x = 0; x < xmax; ++x)
      if (ww != 0.0) k[x] /= ww;
    (*first)[xx] = xmin;
    (*count)[xx] = xmax;
  }
  fixed->resize(kk.size());
  for (size_t i = 0; i < kk.size(); ++i)
    (*fixed)[i] = static_cast<int32_t>(kk[i] < 0 ? -0.5 + kk[i] * (1 << kPrecisionBits)
                                                 : 0.5 + kk[i] * (1 << kPrecisionBits));
  return ksize;
}

inline uint8_t clip8(int32_t v) {
  if (v >= (1 << kPrecisionBits << 8)) return 255;
  if (v <= 0) return 0;
  return static_cast<uint8_t>(v >> kPrecisionBits);
}

// The channel planes of an 8-bit image, transposed: planes[c][x][y] = image(y, x, c) for the `rows` x
// `cols` window at `in` (HWC, row stride `stride` bytes), in blocks that stay in the cache.
void transpose_planes(const uint8_t* in, int stride, int rows, int cols, uint8_t* planes) {
  const int block = 32;
  const size_t plane = static_cast<size_t>(rows) * cols;
  for (int y0 = 0; y0 < rows; y0 += block) {
    const int y1 = y0 + block < rows ? y0 + block : rows;
    for (int x0 = 0; x0 < cols; x0 += block) {
      const int x1 = x0 + block < cols ? x0 + block : cols;
      for (int y = y0; y < y1; ++y) {
        const uint8_t* p = in + static_cast<size_t>(y) * stride;
        for (int x = x0; x < x1; ++x) {
          const size_t at = static_cast<size_t>(x) * rows + y;
          planes[at] = p[3 * x];
          planes[plane + at] = p[3 * x + 1];
          planes[2 * plane + at] = p[3 * x + 2];
        }
      }
    }
  }
}

// One resampling pass along the contiguous axis' neighbour: out[j][i] = sum_t in[first[j] + t][i] * k[j][t]
// for `lines` output lines of `n` values, each input line `n` values long (vectorises over i).
void resample_lines(const uint8_t* in, int n, int lines, const std::vector<int>& first, const std::vector<int>& count,
                    const std::vector<int32_t>& k, int ksize, uint8_t* out, int32_t* acc) {
  for (int j = 0; j < lines; ++j) {
    const int32_t* w = &k[static_cast<size_t>(j) * ksize];
    for (int i = 0; i < n; ++i) acc[i] = 1 << (kPrecisionBits - 1);
    for (int t = 0; t < count[j]; ++t) {
      const uint8_t* line = in + static_cast<size_t>(first[j] + t) * n;
      const int32_t wt = w[t];
      for (int i = 0; i < n; ++i) acc[i] += line[i] * wt;
    }
    uint8_t* o = out + static_cast<size_t>(j) * n;
    for (int i = 0; i < n; ++i) o[i] = clip8(acc[i]);
  }
}

// The transpose of each of the three `rows` x `cols` planes in `in` into `out` (cols x rows).
void transpose_back(const uint8_t* in, int rows, int cols, uint8_t* out) {
  const int block = 32;
  const size_t plane = static_cast<size_t>(rows) * cols;
  for (int c = 0; c < 3; ++c)
    for (int y0 = 0; y0 < rows; y0 += block)
      for (int x0 = 0; x0 < cols; x0 += block) {
        const int y1 = y0 + block < rows ? y0 + block : rows, x1 = x0 + block < cols ? x0 + block : cols;
        for (int y = y0; y < y1; ++y)
          for (int x = x0; x < x1; ++x) out[c * plane + static_cast<size_t>(x) * rows + y] = in[c * plane + static_cast<size_t>(y) * cols + x];
      }
}

// Crop (top, left, height, width) of the HWC RGB image `src` (row stride `stride` bytes) resized to
// out_h x out_w into `out` (HWC, packed), as Pillow resizes the cropped image: the horizontal pass
// over the rows the vertical pass reads, rounded to 8 bits, then the vertical pass. Both passes run
// over channel planes laid out so that the pass's inner loop reads contiguous memory.
void resize_crop(const uint8_t* src, int stride, int top, int left, int height, int width, uint8_t* out,
                 int out_h, int out_w) {
  const bool horizontal = out_w != width, vertical = out_h != height;
  std::vector<int> xfirst, xcount, yfirst, ycount;
  std::vector<int32_t> xk, yk;
  const int yks = coefficients(height, 0.0, height, out_h, &yfirst, &ycount, &yk);
  const int row0 = yfirst[0], row1 = yfirst[out_h - 1] + ycount[out_h - 1];
  const int rows = vertical ? row1 - row0 : height, first_row = vertical ? row0 : 0;
  const uint8_t* crop = src + static_cast<size_t>(top + first_row) * stride + static_cast<size_t>(left) * 3;
  const size_t plane = static_cast<size_t>(rows) * out_w;
  std::vector<uint8_t> planes(3 * plane);            // [c][y][x]: the horizontally resampled rows
  std::vector<int32_t> acc((rows > out_w ? rows : out_w) + 1);
  if (horizontal) {
    const int xks = coefficients(width, 0.0, width, out_w, &xfirst, &xcount, &xk);
    std::vector<uint8_t> columns(3 * static_cast<size_t>(rows) * width);   // [c][x][y]
    transpose_planes(crop, stride, rows, width, columns.data());
    std::vector<uint8_t> resampled(3 * plane);                             // [c][x][y]
    for (int c = 0; c < 3; ++c)
      resample_lines(&columns[c * static_cast<size_t>(rows) * width], rows, out_w, xfirst, xcount, xk, xks,
                     &resampled[c * plane], acc.data());
    transpose_back(resampled.data(), out_w, rows, planes.data());
  } else {
    for (int y = 0; y < rows; ++y) {
      const uint8_t* p = crop + static_cast<size_t>(y) * stride;
      for (int x = 0; x < out_w; ++x)
        for (int c = 0; c < 3; ++c) planes[c * plane + static_cast<size_t>(y) * out_w + x] = p[3 * x + c];
    }
  }
  const uint8_t* result = planes.data();
  std::vector<uint8_t> resized;
  if (vertical) {
    for (int i = 0; i < out_h; ++i) yfirst[i] -= row0;
    resized.resize(3 * static_cast<size_t>(out_h) * out_w);
    for (int c = 0; c < 3; ++c)
      resample_lines(&planes[c * plane], out_w, out_h, yfirst, ycount, yk, yks,
                     &resized[c * static_cast<size_t>(out_h) * out_w], acc.data());
    result = resized.data();
  }
  const size_t out_plane = static_cast<size_t>(out_h) * out_w;
  for (size_t i = 0; i < out_plane; ++i) {
    out[3 * i] = result[i];
    out[3 * i + 1] = result[out_plane + i];
    out[3 * i + 2] = result[2 * out_plane + i];
  }
}

// A counter-based generator: splitmix64 over (key, draw number); uniform doubles in [0, 1).
struct Draws {
  uint64_t state;
  explicit Draws(uint64_t key) : state(key) {}
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  double uniform(double lo, double hi) { return lo + (hi - lo) * ((next() >> 11) * (1.0 / 9007199254740992.0)); }
  int integer(int lo, int hi) {  // inclusive, as random.randint
    uint64_t span = static_cast<uint64_t>(hi - lo) + 1;
    return lo + static_cast<int>(next() % span);
  }
};

// torchvision's / timm's RandomResizedCrop.get_params: box = (top, left, height, width).
void draw_box(int height, int width, double scale_lo, double scale_hi, double ratio_lo, double ratio_hi,
              Draws* draws, int box[4]) {
  const double area = static_cast<double>(height) * width;
  const double log_lo = std::log(ratio_lo), log_hi = std::log(ratio_hi);
  for (int attempt = 0; attempt < 10; ++attempt) {
    double target = area * draws->uniform(scale_lo, scale_hi);
    double aspect = std::exp(draws->uniform(log_lo, log_hi));
    int w = static_cast<int>(std::nearbyint(std::sqrt(target * aspect)));
    int h = static_cast<int>(std::nearbyint(std::sqrt(target / aspect)));
    if (0 < w && w <= width && 0 < h && h <= height) {
      box[0] = draws->integer(0, height - h);
      box[1] = draws->integer(0, width - w);
      box[2] = h;
      box[3] = w;
      return;
    }
  }
  double in_ratio = static_cast<double>(width) / height;
  int w = width, h = height;
  if (in_ratio < ratio_lo) {
    h = static_cast<int>(std::nearbyint(w / ratio_lo));
  } else if (in_ratio > ratio_hi) {
    w = static_cast<int>(std::nearbyint(h * ratio_hi));
  }
  box[0] = (height - h) / 2;
  box[1] = (width - w) / 2;
  box[2] = h;
  box[3] = w;
}

}  // namespace

extern "C" {

// The crop `box` = (top, left, height, width) of the HWC RGB image `src` (height x width), resized
// to out_h x out_w into `out`.
int convmlp_resized_crop(const uint8_t* src, int height, int width, const int32_t* box, uint8_t* out, int out_h,
                         int out_w) {
  if (box[2] <= 0 || box[3] <= 0 || box[0] < 0 || box[1] < 0 || box[0] + box[2] > height ||
      box[1] + box[3] > width || out_h <= 0 || out_w <= 0)
    return 1;
  resize_crop(src, width * 3, box[0], box[1], box[2], box[3], out, out_h, out_w);
  return 0;
}

// A random crop drawn from `key` (scale: area fraction range; ratio: aspect ratio range, width over
// height), resized to size x size into `out`; the box drawn is written to `box`.
int convmlp_random_resized_crop(const uint8_t* src, int height, int width, uint8_t* out, int size, double scale_lo,
                                double scale_hi, double ratio_lo, double ratio_hi, uint64_t key, int32_t* box) {
  if (height <= 0 || width <= 0 || size <= 0) return 1;
  Draws draws(key);
  int b[4];
  draw_box(height, width, scale_lo, scale_hi, ratio_lo, ratio_hi, &draws, b);
  for (int i = 0; i < 4; ++i) box[i] = b[i];
  resize_crop(src, width * 3, b[0], b[1], b[2], b[3], out, size, size);
  return 0;
}

}  // extern "C"
