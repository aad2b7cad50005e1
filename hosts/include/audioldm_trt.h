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
 *
 * Compatibility. The version is MAJOR.MINOR.PATCH, the same as the audioldm-trt Python package's; the library
 * refuses to start with a package of another MAJOR.MINOR. Between the library and the hosts built against it:
 * - PATCH releases change no declaration.
 * - MINOR releases only add: functions, statuses, and fields at the end of a parameters struct. Every
 *   parameters struct starts with `size_t struct_size`, which the caller sets to its own sizeof (the *_init
 *   functions do), so a host built against an older header runs with a newer library: the fields past its
 *   struct_size take their defaults. A host built against a newer header runs with an older library as long as
 *   the fields that library does not know are zero (otherwise the call is AUDIOLDM_TRT_INVALID_ARGUMENT) and it
 *   calls no function that library lacks. Structs have no tail padding, so that an older struct_size never
 *   covers part of a newer field.
 * - MAJOR releases may change anything, and change the shared library's SONAME (libaudioldm_trt.so.MAJOR).
 * While MAJOR is 0, MINOR plays MAJOR's part and PATCH MINOR's (SONAME libaudioldm_trt.so.0.MINOR).
 * AUDIOLDM_TRT_VERSION_COMPATIBLE(audioldm_trt_version_number()) says whether the library loaded at run time
 * runs this header's hosts.
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

/* The version of this header (CMake's project version is read from these lines). */
#define AUDIOLDM_TRT_VERSION_MAJOR 0
#define AUDIOLDM_TRT_VERSION_MINOR 1
#define AUDIOLDM_TRT_VERSION_PATCH 0
#define AUDIOLDM_TRT_VERSION "0.1.0"
#define AUDIOLDM_TRT_VERSION_NUMBER \
    (AUDIOLDM_TRT_VERSION_MAJOR * 10000 + AUDIOLDM_TRT_VERSION_MINOR * 100 + AUDIOLDM_TRT_VERSION_PATCH)
/* Nonzero where a library of version number `number` runs hosts built against this header: the same MAJOR (and
 * MINOR while MAJOR is 0), and not older. */
#define AUDIOLDM_TRT_VERSION_COMPATIBLE(number)                                                          \
    ((number) / 10000 == AUDIOLDM_TRT_VERSION_MAJOR &&                                                   \
     (AUDIOLDM_TRT_VERSION_MAJOR != 0 || (number) / 100 % 100 == AUDIOLDM_TRT_VERSION_MINOR) &&          \
     (number) >= AUDIOLDM_TRT_VERSION_NUMBER)

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
    /* The Python interpreter did not start, is of another version than the library's, or lacks the
     * audioldm_trt package (of this library's MAJOR.MINOR) or one it needs. */
    AUDIOLDM_TRT_PYTHON_ERROR = 6,
    /* Anything else (out of memory, an unexpected error: the message names the exception and says what). */
    AUDIOLDM_TRT_FAILED = 7,
    /* The generation was cancelled: its progress callback returned nonzero, or audioldm_trt_cancel. */
    AUDIOLDM_TRT_CANCELLED = 8
} audioldm_trt_status;

/* An engine loaded from an export directory: load once, share between threads, free once. */
typedef struct audioldm_trt_engine audioldm_trt_engine;

/* How to start the embedded interpreter: audioldm_trt_initialize. */
typedef struct audioldm_trt_init_params {
    size_t struct_size;            /* sizeof(audioldm_trt_init_params) as the caller was compiled */
    /* A virtual environment's bin/python, whose site-packages hold audioldm_trt, or NULL (default) for the first
     * that exists of: $AUDIOLDM_TRT_PYTHON where use_environment is set; bin/python beside the directory of
     * the library (the library installed into the environment: cmake --install --prefix VENV); the python the
     * library was built with. */
    const char *python_executable;
    /* Nonzero: Python reads its environment variables (PYTHONPATH, PYTHONHOME, PYTHONUTF8, ...) and the library
     * AUDIOLDM_TRT_PYTHON. 0 (default): the interpreter is isolated from the host's environment. */
    int64_t use_environment;
} audioldm_trt_init_params;

/* A progress callback: called on the generating thread after each UNet call, without the GIL, with the calls
 * done (1 to total) and their total (second-order schedulers make two per step). Returning nonzero cancels the
 * generation: audioldm_trt_generate returns AUDIOLDM_TRT_CANCELLED. It may call audioldm_trt_cancel. */
typedef int (*audioldm_trt_progress_callback)(void *user_data, int done, int total);

/* How to load an engine: audioldm_trt_engine_load. */
typedef struct audioldm_trt_load_params {
    size_t struct_size; /* sizeof(audioldm_trt_load_params) as the caller was compiled */
    /* "auto" or NULL (default: TensorRT where its engines run here, else ONNX Runtime CUDA, else CPU), "tensorrt",
     * "onnxruntime" (CUDA where available, else CPU), "onnxruntime-cuda", "onnxruntime-cpu" or "openvino". */
    const char *backend;
    /* A diffusers scheduler class name such as "DPMSolverMultistepScheduler", or NULL (default) for the
     * checkpoint's own. */
    const char *scheduler;
    /* The openvino backend's "fp32" or "bf16" (on CPUs with AVX512_BF16 or AMX); NULL (default): fp32. The other
     * backends run the export's own precision. */
    const char *precision;
    int64_t threads; /* threads per graph call; 0 (default) for one per core */
} audioldm_trt_load_params;

/* What to generate. Fill it with audioldm_trt_generate_params_init (the Python API's defaults), then set the
 * fields you need. */
typedef struct audioldm_trt_generate_params {
    size_t struct_size;          /* sizeof(audioldm_trt_generate_params) as the caller was compiled */
    const char *prompt;          /* UTF-8; required */
    const char *negative_prompt; /* UTF-8, or NULL for none (default) */
    double duration_s;           /* seconds of audio; 0 (default): the model's default length */
    double guidance;             /* classifier-free guidance scale; <= 1 disables it (default 2.5) */
    double eta;                  /* DDIM's eta (default 0) */
    int32_t steps;               /* denoising steps (default 10) */
    int32_t waveforms;           /* waveforms for the prompt (default 1) */
    int64_t seeded;              /* nonzero: use `seed`; 0 (default): draw a fresh seed */
    uint64_t seed;               /* as torch.Generator().manual_seed(seed); a negative s is s + 2**64 */
    audioldm_trt_progress_callback progress; /* NULL (default): none */
    void *user_data;                         /* passed to progress */
} audioldm_trt_generate_params;

/* The library's version, AUDIOLDM_TRT_VERSION and AUDIOLDM_TRT_VERSION_NUMBER of the header it was built from. */
AUDIOLDM_TRT_API const char *audioldm_trt_version(void);
AUDIOLDM_TRT_API int audioldm_trt_version_number(void);

/* Fill a parameters struct with the defaults above; `struct_size` is the caller's sizeof the struct, which
 * init stores in it (fields past it are not touched). */
AUDIOLDM_TRT_API void audioldm_trt_init_params_init(audioldm_trt_init_params *params, size_t struct_size);
AUDIOLDM_TRT_API void audioldm_trt_load_params_init(audioldm_trt_load_params *params, size_t struct_size);
AUDIOLDM_TRT_API void audioldm_trt_generate_params_init(audioldm_trt_generate_params *params, size_t struct_size);

/* Starts the embedded interpreter (params NULL: the defaults). Optional: without it the first call that needs
 * Python starts it with the defaults. The interpreter is isolated: it does not read the environment unless
 * params->use_environment is set, does not set the process's locale (it runs in UTF-8 mode) and installs no
 * signal handlers. Fails if the interpreter already runs as another one, or if the virtual environment is of
 * another Python version than the library links with. Where the host process already runs Python, that
 * interpreter is used and the parameters are ignored. */
AUDIOLDM_TRT_API audioldm_trt_status audioldm_trt_initialize(const audioldm_trt_init_params *params, char **error);

/* Loads an export made by `audioldm-trt export` (or built by `audioldm-trt build`); params NULL: the defaults.
 * On success *engine is the new engine; on failure it is NULL. */
AUDIOLDM_TRT_API audioldm_trt_status audioldm_trt_engine_load(const char *directory,
                                                              const audioldm_trt_load_params *params,
                                                              audioldm_trt_engine **engine, char **error);

/* Frees an engine and what it holds (its sessions and GPU memory, at once; NULL is ignored). No call may be using
 * it. */
AUDIOLDM_TRT_API void audioldm_trt_engine_free(audioldm_trt_engine *engine);

/* The engine's audio sampling rate in Hz; 0 for NULL. */
AUDIOLDM_TRT_API int audioldm_trt_sampling_rate(const audioldm_trt_engine *engine);

/* What runs the graphs, e.g. "onnxruntime 1.22.0 (CPUExecutionProvider)"; valid while the engine lives; "" for
 * NULL. */
AUDIOLDM_TRT_API const char *audioldm_trt_engine_backend(const audioldm_trt_engine *engine);

/* Cancels the calls of audioldm_trt_generate on `engine` that have started before it returns, on any thread:
 * each returns AUDIOLDM_TRT_CANCELLED after the UNet call it is making (or, still encoding its prompt, after its
 * first). Calls that have made their last UNet call finish; calls started later, and other engines, are not
 * affected. Never blocks and takes no lock: callable from any thread, from a progress callback, and from a
 * signal handler (it is one atomic increment). NULL is ignored. */
AUDIOLDM_TRT_API void audioldm_trt_cancel(audioldm_trt_engine *engine);

/* Generates audio: *audio is `*waveforms` rows of `*samples` float32 samples in [-1, 1] at the engine's
 * sampling rate, row after row; free it with audioldm_trt_audio_free. *seed (where seed is not NULL) is the
 * seed used, the one drawn when params->seeded is 0. On failure (cancellation included) *audio is NULL and the
 * counts are 0. */
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
