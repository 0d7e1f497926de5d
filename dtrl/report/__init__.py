"""Layer 7: the report: tables, figures and the findings page from a grid's run directories."""
