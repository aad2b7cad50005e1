/* audioldm_trt.h: the audioldm-trt engine for C and C++ hosts, and any language with a C FFI.
 *
 * The library embeds CPython and runs the engine of the `audioldm_trt` Python package in it; this header has no
 * Python types. Every function is safe to call from any host thread, at once: the interpreter starts once per
 * process (at the first call that needs it) and the graphs run without the GIL, so concurrent generations on
 * one engine overlap as they do in Python.
 *
 * Errors: every function that can fail returns a status and, where `error` is not NULL, sets `*error` to a
 * one-line message (UTF-8, free it with audioldm_trt_string_free) on failure and to NULL on success. Nothing
 * is thrown across this interface and nothing aborts the process.
 */
#ifndef AUDIOLDM_TRT_H
#define AUDIOLDM_TRT_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#if defined(AUDIOLDM_TRT_BUILDING)
#define AUDIOLDM_TRT_API __declspec(dllexport)
#else
#define AUDIOLDM_TRT_API __declspec(dllimport)
#endif
#else
#define AUDIOLDM_TRT_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* The version of this header; audioldm_trt_version() returns the library's, for a check at run time. */
#define AUDIOLDM_TRT_VERSION "0.1.0"

typedef enum audioldm_trt_status {
    AUDIOLDM_TRT_OK = 0,
    /* A bad argument (the engine's ValueError, a NULL pointer, text that is not UTF-8), found before any
     * graph runs. */
    AUDIOLDM_TRT_INVALID_ARGUMENT = 1,
    /* The engine directory is missing, incomplete, corrupt or from an incompatible export or build. */
    AUDIOLDM_TRT_ENGINE_DIRECTORY = 2,
    /* The backend cannot run here (library, GPU or TensorRT engines missing). */
    AUDIOLDM_TRT_BACKEND_UNAVAILABLE = 3,
    /* A stage produced NaN or infinity (fp16 overflow); the message names the stage. */
    AUDIOLDM_TRT_NON_FINITE_OUTPUT = 4,
    /* A file could not be written. */
    AUDIOLDM_TRT_IO_ERROR = 5,
    /* The Python interpreter did not start, or it lacks the audioldm_trt package or one it needs. */
    AUDIOLDM_TRT_PYTHON_ERROR = 6,
    /* Anything else (out of memory, an unexpected error: the message says what). */
    AUDIOLDM_TRT_FAILED = 7
} audioldm_trt_status;

/* An engine loaded from an export directory: load once, share between threads, free once. */
typedef struct audioldm_trt_engine audioldm_trt_engine;

/* What to generate. Fill it with audioldm_trt_generate_params_init (the Python API's defaults), then set the
 * fields you need. */
typedef struct audioldm_trt_generate_params {
    const char *prompt;          /* UTF-8; required */
    const char *negative_prompt; /* UTF-8, or NULL for none (default) */
    double duration_s;           /* seconds of audio; 0 (default): the model's default length */
    int steps;                   /* denoising steps (default 10) */
    double guidance;             /* classifier-free guidance scale; <= 1 disables it (default 2.5) */
    int waveforms;               /* waveforms for the prompt (default 1) */
    double eta;                  /* DDIM's eta (default 0) */
    int seeded;                  /* nonzero: use `seed`; 0 (default): draw a fresh seed */
    uint64_t seed;               /* as torch.Generator().manual_seed(seed); a negative s is s + 2**64 */
} audioldm_trt_generate_params;

/* The library's version, AUDIOLDM_TRT_VERSION of the header it was built from. */
AUDIOLDM_TRT_API const char *audioldm_trt_version(void);

/* Starts the embedded interpreter as `python_executable` (a virtual environment's bin/python, whose
 * site-packages hold audioldm_trt). Optional: without it the first load starts the interpreter the library
 * was built against (CMake's Python_EXECUTABLE). Fails if the interpreter already runs as another one. Where
 * the host process already runs Python, that interpreter is used and `python_executable` is ignored. */
AUDIOLDM_TRT_API audioldm_trt_status audioldm_trt_initialize(const char *python_executable, char **error);

/* Loads an export made by `audioldm-trt export` (or built by `audioldm-trt build`).
 * backend: "auto" or NULL (TensorRT where its engines run here, else ONNX Runtime CUDA, else CPU), "tensorrt",
 *          "onnxruntime" (CUDA where available, else CPU), "onnxruntime-cuda" or "onnxruntime-cpu".
 * scheduler: a diffusers scheduler class name such as "DPMSolverMultistepScheduler", or NULL for the
 *          checkpoint's own.
 * threads: ONNX Runtime threads per graph call; 0 for one per core.
 * On success *engine is the new engine; on failure it is NULL. */
AUDIOLDM_TRT_API audioldm_trt_status audioldm_trt_engine_load(const char *directory, const char *backend,
                                                              const char *scheduler, int threads,
                                                              audioldm_trt_engine **engine, char **error);

/* Frees an engine (NULL is ignored). No call may be using it. */
AUDIOLDM_TRT_API void audioldm_trt_engine_free(audioldm_trt_engine *engine);

/* The engine's audio sampling rate in Hz; 0 for NULL. */
AUDIOLDM_TRT_API int audioldm_trt_sampling_rate(const audioldm_trt_engine *engine);

/* What runs the graphs, e.g. "onnxruntime 1.22.0 (CPUExecutionProvider)"; valid while the engine lives; "" for
 * NULL. */
AUDIOLDM_TRT_API const char *audioldm_trt_engine_backend(const audioldm_trt_engine *engine);

/* Fills params with the defaults above (prompt NULL). */
AUDIOLDM_TRT_API void audioldm_trt_generate_params_init(audioldm_trt_generate_params *params);

/* Generates audio: *audio is `*waveforms` rows of `*samples` float32 samples in [-1, 1] at the engine's
 * sampling rate, row after row; free it with audioldm_trt_audio_free. *seed (where seed is not NULL) is the
 * seed used, the one drawn when params->seeded is 0. On failure *audio is NULL and the counts are 0. */
AUDIOLDM_TRT_API audioldm_trt_status audioldm_trt_generate(audioldm_trt_engine *engine,
                                                           const audioldm_trt_generate_params *params,
                                                           float **audio, size_t *waveforms, size_t *samples,
                                                           uint64_t *seed, char **error);

/* Writes one waveform as `audioldm-trt generate` does: WAV or FLAC by the path's extension, 16-bit PCM,
 * through a temporary file renamed into place. */
AUDIOLDM_TRT_API audioldm_trt_status audioldm_trt_write_audio(const char *path, const float *audio, size_t samples,
                                                              int sampling_rate, char **error);

/* Free what audioldm_trt_generate and the error messages return (NULL is ignored). */
AUDIOLDM_TRT_API void audioldm_trt_audio_free(float *audio);
AUDIOLDM_TRT_API void audioldm_trt_string_free(char *text);

#ifdef __cplusplus
}
#endif

#endif /* AUDIOLDM_TRT_H */
