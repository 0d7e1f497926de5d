# Tables, rliable figures and REPORT.md from every finished run of the grid (dtrl report), then
# REPORT.md as HTML (report_html). Declared outputs are the main table, REPORT.md and what Snakemake's
# HTML report is made from, marked with report() so that
#
#   snakemake --configfile config/quick.yaml --report results/quick/report.html
#
# writes one self-contained HTML file that a researcher can send around. It opens on REPORT.md (the
# workflow description, workflow/report/workflow.rst, shows front.html: the main table, the findings,
# then every other section), and lists under "Results" REPORT.md as a page, each table and each figure
# with a caption, then the DAG and each job's runtime. The CSV, markdown and PDF versions are written
# beside them.


rule report:
    input:
        report_inputs,
    output:
        csv=REPORT_MAIN,
        md=REPORT_MAIN_MD,
        page=REPORT_PAGE,
        tables=report(directory(f"{R}/tables/html"), patterns=["{name}.html"], caption="../report/tables.rst",
                      category=REPORT_CATEGORIES["tables"], subcategory=table_subcategory, labels={"table": "{name}"}),
        figures=report(directory(f"{R}/figures"), patterns=["{name}.png"], caption="../report/figures.rst",
                       category=REPORT_CATEGORIES["figures"], subcategory=figure_subcategory,
                       labels={"figure": "{name}"}),
    log:
        f"{R}/logs/report.log",
    params:
        cfg=DTRL_CONFIG_ARGS,
    threads: THREADS["report"]
    resources:
        mem_mb=RES.report.mem_mb,
        runtime=RES.report.runtime,
        cpus_per_task=cpus,
    localrule: True
    conda:
        "../envs/dtrl.yaml"
    shell:
        "python -m dtrl.cli report {params.cfg} >> {log} 2>&1"


# REPORT.md as a standalone page (listed first in the report) and as the fragment the report's landing
# page shows (workflow/report/workflow.rst), figures embedded.
rule report_html:
    input:
        page=REPORT_PAGE,
    output:
        page=report(REPORT_HTML, caption="../report/page.rst", category=REPORT_CATEGORIES["page"],
                    labels={"page": "REPORT.md"}),
        front=REPORT_FRONT,
    log:
        f"{R}/logs/report_html.log",
    threads: 1
    resources:
        mem_mb=RES.report.mem_mb,
        runtime=RES.report.runtime,
        cpus_per_task=cpus,
    localrule: True
    conda:
        "../envs/dtrl.yaml"
    script:
        "../scripts/report_html.py"


# Warnings that matter (a SAC behaviour run that never reached the 'medium' return, so 'medium' is
# its best checkpoint) are written to the jobs' logs; repeat them where the user is looking.
onsuccess:
    from dtrl.report.runs import data_warnings

    for w in data_warnings(EXP):
        print(f"dtrl: warning: {w}  (also in {R}/tables/main.md)", file=sys.stderr)
