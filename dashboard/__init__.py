"""collapsewatch.dashboard"""
