"""collapsewatch.trainer"""
