"""lumos.report"""
