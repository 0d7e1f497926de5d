# Datasets: one SAC behaviour run per env family (shared by the family's generated tasks), then
# one dataset per task. Generated D4RL-recipe data unless `data.sources` names a D4RL file or a
# Minari id for the task. Declared outputs are only what marks a step complete (a flag Snakemake
# touches when the behaviour run succeeds; the dataset's summary JSON, written last): the SAC
# state, metadata.json, the behaviour checkpoints and the HDF5 files are never deleted by
# Snakemake, so a killed job resumes where it stopped.


rule behaviour:
    output:
        touch(behaviour_done("{family}")),
    log:
        f"{R}/logs/behaviour/{{family}}.log",
    params:
        cfg=DTRL_CONFIG_ARGS,
        until=behaviour_until,
    threads: THREADS["behaviour"]
    resources:
        gpu=SAC_GPU,
        mem_mb=RES.behaviour.mem_mb,
        runtime=RES.behaviour.runtime,
        cpus_per_task=cpus,
        gpu_milli=gpu_milli(SAC_GPU),
    conda:
        "../envs/dtrl.yaml"
    shell:
        logged("python -m dtrl.cli behaviour {wildcards.family} --until {params.until} {params.cfg} --set threads={threads}")


rule data:
    input:
        unpack(data_inputs),
    output:
        data_done("{task}"),
    log:
        f"{R}/logs/data/{{task}}.log",
    params:
        cfg=DTRL_CONFIG_ARGS,
    threads: THREADS["data"]
    resources:
        mem_mb=RES.data.mem_mb,
        runtime=RES.data.runtime,
        cpus_per_task=cpus,
    conda:
        "../envs/dtrl.yaml"
    shell:
        logged("python -m dtrl.cli data {wildcards.task} {params.cfg} --set threads={threads} --out {output}")
