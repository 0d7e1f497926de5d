# Tables and rliable figures from every finished run of the grid (dtrl report). Declared outputs
# are the main table; the other tables and the figures are written beside it on every run.


rule report:
    input:
        report_inputs,
    output:
        csv=REPORT_MAIN,
        md=REPORT_MAIN_MD,
    log:
        f"{R}/logs/report.log",
    params:
        cfg=DTRL_CONFIG_ARGS,
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
        cpus_per_task=1,
    localrule: True
    conda:
        "../envs/dtrl.yaml"
    shell:
        "python -m dtrl.cli report {params.cfg} >> {log} 2>&1"
