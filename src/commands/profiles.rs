use super::Context;
use super::output::{print_json, table};
use crate::error::Error;
use crate::profile::Profile;

pub fn run(ctx: &Context) -> Result<(), Error> {
    if ctx.json {
        return print_json(&Profile::all());
    }
    let mut t = table(["profile", "model_type", "architectures", "q/k norm", "q/k/v bias", "summary"]);
    for p in Profile::all() {
        t.add_row([
            p.name.to_string(),
            p.model_types.join(", "),
            p.architectures.join(", "),
            yes_no(p.qk_norm),
            yes_no(p.qkv_bias),
            p.summary.to_string(),
        ]);
    }
    println!("{t}");
    println!("\n`profile = \"auto\"` picks the profile whose model_type matches config.json.");
    Ok(())
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}
