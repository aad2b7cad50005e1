/* consumer ENGINE_DIR OUT.wav: a host of the installed library, with progress and cancellation. */
#include <audioldm_trt.h>

#include <stdio.h>

static int show_progress(void *user_data, int done, int total) {
    (void)user_data;
    fprintf(stderr, "\rdenoising %d/%d", done, total);
    return 0; /* nonzero would cancel: audioldm_trt_generate returns AUDIOLDM_TRT_CANCELLED */
}

static int fail(char *error) {
    fprintf(stderr, "consumer: %s\n", error);
    audioldm_trt_string_free(error);
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    if (!AUDIOLDM_TRT_VERSION_COMPATIBLE(audioldm_trt_version_number())) {
        fprintf(stderr, "consumer: library %s, built for %s\n", audioldm_trt_version(), AUDIOLDM_TRT_VERSION);
        return 1;
    }
    char *error = NULL;
    audioldm_trt_engine *engine = NULL;
    if (audioldm_trt_engine_load(argv[1], NULL, &engine, &error) != AUDIOLDM_TRT_OK) return fail(error);

    audioldm_trt_generate_params params;
    audioldm_trt_generate_params_init(&params, sizeof params); /* the Python API's defaults */
    params.prompt = "a dog barking in the rain";
    params.steps = 5;
    params.seeded = 1;
    params.seed = 0;
    params.progress = show_progress;
    float *audio = NULL; /* waveforms x samples float32 at audioldm_trt_sampling_rate(engine) */
    size_t waveforms = 0, samples = 0;
    int status = audioldm_trt_generate(engine, &params, &audio, &waveforms, &samples, NULL, &error);
    if (status == AUDIOLDM_TRT_OK) {
        fprintf(stderr, "\n");
        status = audioldm_trt_write_audio(argv[2], audio, samples, audioldm_trt_sampling_rate(engine), &error);
        audioldm_trt_audio_free(audio);
    }
    audioldm_trt_engine_free(engine); /* frees its sessions and GPU memory now */
    return status == AUDIOLDM_TRT_OK ? 0 : fail(error);
}
